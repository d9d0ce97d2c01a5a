/* Tests for src/core/rpc: framing round trips, streaming under every split,
 * each malformed shape with its message, limits, encoder failure modes, arg
 * accessors and the channel-id tracker. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/rpc.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* "93 01 00 90" -> bytes; caller frees. */
static unsigned char *hex(const char *s, size_t *len)
{
    unsigned char *out = xmalloc(strlen(s) / 2 + 1);
    size_t n = 0;
    while (*s) {
        if (*s == ' ') {
            s++;
            continue;
        }
        char pair[3] = {s[0], s[1], 0};
        out[n++] = (unsigned char)strtoul(pair, NULL, 16);
        s += 2;
    }
    *len = n;
    return out;
}

/* Feed hex bytes to a fresh decoder and return the first result of next;
 * the message text lands in err. */
static int decode_hex_once(const char *h, size_t max, rpc_msg_t *m, err_t *err)
{
    size_t n;
    unsigned char *b = hex(h, &n);
    rpc_decoder_t d;
    rpc_decoder_init(&d, max);
    rpc_decoder_feed(&d, b, n);
    int rc = rpc_decoder_next(&d, m, err);
    rpc_decoder_free(&d);
    free(b);
    return rc;
}

static void assert_decode_error(const char *h, int code, const char *msg)
{
    rpc_msg_t m;
    err_t err = {0};
    int rc = decode_hex_once(h, RPC_MAX_MESSAGE_DEFAULT, &m, &err);
    assert_int_equal(rc, code);
    assert_int_equal(err.code, code);
    assert_string_equal(err.msg, msg);
}

static void assert_str_arg(const rpc_msg_t *m, size_t i, const char *want)
{
    const char *p;
    size_t len;
    err_t err = {0};
    assert_int_equal(rpc_arg_str(m, i, &p, &len, &err), 0);
    assert_int_equal(len, strlen(want));
    assert_memory_equal(p, want, len);
}

/* The example of docs/protocol.md, both directions. */
static void test_hex_example(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 1, RPC_HANDSHAKE, "s", "ab12"), 0);
    size_t n;
    unsigned char *want = hex("93 01 00 91 a4 61 62 31 32", &n);
    assert_int_equal(out.len, n);
    assert_memory_equal(out.data, want, n);
    free(want);
    buf_free(&out);

    rpc_msg_t m;
    err_t err = {0};
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1024);
    unsigned char *b = hex("94 05 00 91 c4 02 68 69 91 92 a5 74 72 61 63 65 a2 78 79", &n);
    assert_int_equal(rpc_decoder_feed(&d, b, n), 0);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 5);
    assert_int_equal(m.type, RPC_WRITE);
    assert_int_equal(m.nargs, 1);
    assert_int_equal(m.size, n);
    assert_int_equal(m.index, 1);
    const char *p;
    size_t len;
    assert_int_equal(rpc_arg_bytes(&m, 0, &p, &len, &err), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(p, "hi", 2);
    assert_int_equal(m.nheaders, 1);
    assert_int_equal(rpc_msg_header(&m, "trace", &p, &len), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(p, "xy", 2);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_free(&d);
    free(b);
}

static void test_roundtrip_format(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    msgpack_object obj = {.type = MSGPACK_OBJECT_NEGATIVE_INTEGER, .via.i64 = -5};
    int rc = rpc_encode(&out, 42, 7, "s, U, d, D, [s u [n]], t, n, b, S, o, s", "hello",
                        (uint64_t)UINT64_MAX, -3, (int64_t)INT64_MIN, "in", 9u, 1, "\x00\x01",
                        (size_t)2, "abc", (size_t)2, &obj, (const char *)NULL);
    assert_int_equal(rc, 0);

    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    assert_int_equal(rpc_decoder_feed(&d, out.data, out.len), 0);
    assert_int_equal(rpc_decoder_buffered(&d), out.len);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(rpc_decoder_buffered(&d), 0);
    assert_int_equal(m.channel, 42);
    assert_int_equal(m.type, 7);
    assert_int_equal(m.nargs, 11);
    assert_int_equal(m.nheaders, 0);
    assert_null(m.headers);
    assert_int_equal(m.size, out.len);
    assert_str_arg(&m, 0, "hello");
    uint64_t u;
    assert_int_equal(rpc_arg_uint(&m, 1, &u, &err), 0);
    assert_true(u == UINT64_MAX);
    int64_t i;
    assert_int_equal(rpc_arg_int(&m, 2, &i, &err), 0);
    assert_int_equal(i, -3);
    assert_int_equal(rpc_arg_int(&m, 3, &i, &err), 0);
    assert_true(i == INT64_MIN);
    const msgpack_object_array *a;
    assert_int_equal(rpc_arg_array(&m, 4, &a, &err), 0);
    assert_int_equal(a->size, 3);
    assert_int_equal(a->ptr[0].type, MSGPACK_OBJECT_STR);
    assert_int_equal(a->ptr[1].via.u64, 9);
    assert_int_equal(a->ptr[2].type, MSGPACK_OBJECT_ARRAY);
    assert_int_equal(a->ptr[2].via.array.size, 1);
    assert_int_equal(a->ptr[2].via.array.ptr[0].type, MSGPACK_OBJECT_NIL);
    bool bv = false;
    assert_int_equal(rpc_arg_bool(&m, 5, &bv, &err), 0);
    assert_true(bv);
    assert_int_equal(m.args[6].type, MSGPACK_OBJECT_NIL);
    const char *p;
    size_t len;
    assert_int_equal(m.args[7].type, MSGPACK_OBJECT_BIN);
    assert_int_equal(rpc_arg_bytes(&m, 7, &p, &len, &err), 0);
    assert_int_equal(len, 2);
    assert_memory_equal(p, "\x00\x01", 2);
    assert_str_arg(&m, 8, "ab");
    assert_int_equal(rpc_arg_int(&m, 9, &i, &err), 0);
    assert_int_equal(i, -5);
    assert_int_equal(m.args[10].type, MSGPACK_OBJECT_NIL);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_free(&d);
    buf_free(&out);
}

static void test_roundtrip_headers(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    rpc_enc_t e;
    rpc_enc_begin(&e, &out, 9, RPC_INVOKE, 1, 3);
    assert_int_equal(rpc_enc_pack(&e, "s", "ping"), 0);
    rpc_enc_header(&e, "x-request-id", "r1", 2);
    rpc_enc_header_bin(&e, "trace", "\xff\x00\x01", 3);
    rpc_enc_header(&e, "x-request-id", "r2", 2);
    assert_int_equal(rpc_enc_end(&e), 0);

    rpc_decoder_t d;
    rpc_decoder_init(&d, 4096);
    rpc_decoder_feed(&d, out.data, out.len);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 9);
    assert_int_equal(m.nargs, 1);
    assert_str_arg(&m, 0, "ping");
    assert_int_equal(m.nheaders, 3);
    const char *v;
    size_t vl;
    /* the first of two same-named headers wins */
    assert_int_equal(rpc_msg_header(&m, "x-request-id", &v, &vl), 0);
    assert_int_equal(vl, 2);
    assert_memory_equal(v, "r1", 2);
    assert_int_equal(rpc_msg_header(&m, "trace", &v, &vl), 0);
    assert_int_equal(vl, 3);
    assert_memory_equal(v, "\xff\x00\x01", 3);
    assert_int_equal(rpc_msg_header(&m, "X-Request-Id", &v, &vl), -ENOENT);
    assert_int_equal(rpc_msg_header(&m, "trac", &v, &vl), -ENOENT);
    rpc_header_t h;
    assert_int_equal(rpc_msg_header_at(&m, 2, &h), 0);
    assert_int_equal(h.name_len, 12);
    assert_memory_equal(h.name, "x-request-id", 12);
    assert_memory_equal(h.value, "r2", 2);
    assert_int_equal(rpc_msg_header_at(&m, 3, &h), -ENOENT);
    rpc_decoder_free(&d);
    buf_free(&out);
}

/* A stream of varied messages used by the split tests: sizes cross every
 * msgpack length encoding (fixstr, str8, str16, str32, bin8/16/32) and
 * some carry headers. */
#define STREAM_MSGS 9
static const size_t stream_sizes[STREAM_MSGS] = {0, 5, 31, 32, 255, 256, 65535, 65536, 100000};

static void build_stream(buf_t *out, char *payload)
{
    for (size_t i = 0; i < STREAM_MSGS; i++) {
        size_t n = stream_sizes[i];
        if (i % 3 == 0) {
            rpc_enc_t e;
            rpc_enc_begin(&e, out, i + 1, i, 2, 1);
            rpc_enc_pack(&e, "bu", payload, n, (unsigned)i);
            rpc_enc_header(&e, "seq", payload, n < 8 ? n : 8);
            assert_int_equal(rpc_enc_end(&e), 0);
        } else {
            assert_int_equal(rpc_encode(out, i + 1, i, "Su", payload, n, (unsigned)i), 0);
        }
    }
}

static void check_stream_msg(const rpc_msg_t *m, size_t i, const char *payload)
{
    err_t err = {0};
    assert_int_equal(m->index, i + 1);
    assert_int_equal(m->channel, i + 1);
    assert_int_equal(m->type, i);
    const char *p;
    size_t len;
    assert_int_equal(rpc_arg_bytes(m, 0, &p, &len, &err), 0);
    assert_int_equal(len, stream_sizes[i]);
    assert_memory_equal(p, payload, len);
    uint64_t u;
    assert_int_equal(rpc_arg_uint(m, 1, &u, &err), 0);
    assert_int_equal(u, i);
    assert_int_equal(m->nheaders, i % 3 == 0 ? 1 : 0);
}

/* Feed the stream in pieces from `next_len`, draining after every feed. */
static void run_split(size_t (*next_len)(size_t *state), size_t seed)
{
    char *payload = xmalloc(100000);
    for (size_t i = 0; i < 100000; i++)
        payload[i] = (char)(i * 7 + 3);
    buf_t out = BUF_INIT(0);
    build_stream(&out, payload);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 200000);
    size_t got = 0, off = 0, st = seed;
    err_t err = {0};
    while (off < out.len) {
        size_t n = next_len(&st);
        if (n > out.len - off)
            n = out.len - off;
        assert_int_equal(rpc_decoder_feed(&d, out.data + off, n), 0);
        off += n;
        rpc_msg_t m;
        int rc;
        while ((rc = rpc_decoder_next(&d, &m, &err)) == 1) {
            check_stream_msg(&m, got, payload);
            got++;
        }
        assert_int_equal(rc, 0);
    }
    assert_int_equal(got, STREAM_MSGS);
    assert_int_equal(rpc_decoder_buffered(&d), 0);
    rpc_decoder_free(&d);
    buf_free(&out);
    free(payload);
}

static size_t len_one(size_t *st)
{
    (void)st;
    return 1;
}

static size_t len_all(size_t *st)
{
    (void)st;
    return SIZE_MAX;
}

static size_t len_random(size_t *st)
{
    *st = *st * 6364136223846793005ull + 1442695040888963407ull;
    size_t r = (*st >> 33);
    /* mostly small pieces, sometimes big ones */
    return r % 4 == 0 ? r % 70000 + 1 : r % 17 + 1;
}

static void test_byte_by_byte(void **state)
{
    (void)state;
    run_split(len_one, 0);
}

static void test_one_feed(void **state)
{
    (void)state;
    run_split(len_all, 0);
}

static void test_random_splits(void **state)
{
    (void)state;
    for (size_t seed = 1; seed <= 20; seed++)
        run_split(len_random, seed);
}

/* A message's memory must survive feeds that make msgpack-c grow or move
 * its buffer: only rpc_decoder_next releases it. ASan checks the reads. */
static void test_message_outlives_feed(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 1, 0, "s", "keep me"), 0);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1 << 20);
    rpc_decoder_feed(&d, out.data, out.len);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    char *big = xcalloc(1, 300000);
    buf_t out2 = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out2, 2, 0, "b", big, (size_t)300000), 0);
    for (size_t off = 0; off < out2.len; off += 1000)
        rpc_decoder_feed(&d, out2.data + off, out2.len - off < 1000 ? out2.len - off : 1000);
    assert_str_arg(&m, 0, "keep me");
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 2);
    rpc_decoder_free(&d);
    buf_free(&out);
    buf_free(&out2);
    free(big);
}

static void test_partial(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 3, 2, ""), 0);
    assert_int_equal(out.len, 4); /* 93 03 02 90 */
    rpc_decoder_t d;
    rpc_decoder_init(&d, 64);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_feed(&d, out.data, 3);
    assert_int_equal(rpc_decoder_buffered(&d), 3);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_feed(&d, out.data + 3, 1);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 3);
    assert_int_equal(m.type, RPC_CLOSE);
    assert_int_equal(m.nargs, 0);
    assert_null(m.args);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_free(&d);
    buf_free(&out);
}

static void test_malformed_shape(void **state)
{
    (void)state;
    assert_decode_error("81 01 02", -EPROTO,
                        "message 1 is a map, expected an array [channel, type, args]");
    assert_decode_error(
        "05", -EPROTO, "message 1 is an unsigned integer, expected an array [channel, type, args]");
    assert_decode_error("a1 78", -EPROTO,
                        "message 1 is a string, expected an array [channel, type, args]");
    assert_decode_error("c0", -EPROTO, "message 1 is nil, expected an array [channel, type, args]");
    assert_decode_error("92 01 00", -EPROTO,
                        "message 1 has 2 elements, expected 3 or 4 [channel, type, args, headers]");
    assert_decode_error("95 01 00 90 90 90", -EPROTO,
                        "message 1 has 5 elements, expected 3 or 4 [channel, type, args, headers]");
    assert_decode_error("90", -EPROTO,
                        "message 1 has 0 elements, expected 3 or 4 [channel, type, args, headers]");
}

static void test_malformed_fields(void **state)
{
    (void)state;
    assert_decode_error("93 a1 31 00 90", -EPROTO,
                        "message 1: channel is a string, expected a positive integer");
    assert_decode_error("93 ff 00 90", -EPROTO,
                        "message 1: channel is a negative integer, expected a positive integer");
    assert_decode_error("93 00 00 90", -EPROTO,
                        "message 1: channel is 0, expected a positive integer");
    assert_decode_error("93 cb 3f f0 00 00 00 00 00 00 00 90", -EPROTO,
                        "message 1: channel is a float, expected a positive integer");
    assert_decode_error("93 c0 00 90", -EPROTO,
                        "message 1: channel is nil, expected a positive integer");
    assert_decode_error("93 01 a1 30 90", -EPROTO,
                        "message 1: type is a string, expected an unsigned integer");
    assert_decode_error("93 01 d0 fe 90", -EPROTO,
                        "message 1: type is a negative integer, expected an unsigned integer");
    assert_decode_error("93 01 c3 90", -EPROTO,
                        "message 1: type is a boolean, expected an unsigned integer");
    assert_decode_error("93 01 00 80", -EPROTO, "message 1: args is a map, expected an array");
    assert_decode_error("93 01 00 c0", -EPROTO, "message 1: args is nil, expected an array");
    assert_decode_error("93 01 00 c4 00", -EPROTO, "message 1: args is binary, expected an array");
}

static void test_malformed_headers(void **state)
{
    (void)state;
    assert_decode_error("94 01 00 90 80", -EPROTO,
                        "message 1: headers is a map, expected an array of [name, value] pairs");
    assert_decode_error("94 01 00 90 c0", -EPROTO,
                        "message 1: headers is nil, expected an array of [name, value] pairs");
    assert_decode_error("94 01 00 90 91 a1 61", -EPROTO,
                        "message 1: header 0 is a string, expected a [name, value] pair");
    assert_decode_error(
        "94 01 00 90 92 92 a1 61 a1 62 93 a1 61 a1 62 a1 63", -EPROTO,
        "message 1: header 1 is an array of another size, expected a [name, value] pair");
    assert_decode_error("94 01 00 90 91 92 01 a1 62", -EPROTO,
                        "message 1: header 0 name is an unsigned integer, expected a string");
    assert_decode_error("94 01 00 90 91 92 c4 01 61 a1 62", -EPROTO,
                        "message 1: header 0 name is binary, expected a string");
    assert_decode_error(
        "94 01 00 90 91 92 a1 61 07", -EPROTO,
        "message 1: header 0 value is an unsigned integer, expected a string or binary");
    assert_decode_error("94 01 00 90 91 92 a1 61 90", -EPROTO,
                        "message 1: header 0 value is an array, expected a string or binary");
    /* an empty header list is fine */
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(decode_hex_once("94 01 00 90 90", 64, &m, &err), 1);
}

static void test_not_msgpack(void **state)
{
    (void)state;
    assert_decode_error("93 01 00 91 c1", -EPROTO,
                        "message 1: not msgpack (byte 0xc1 at offset 4)");
    rpc_decoder_t d;
    rpc_decoder_init(&d, 64);
    size_t n;
    unsigned char *b = hex("c1", &n);
    assert_int_equal(rpc_decoder_feed(&d, b, n), -EPROTO);
    free(b);
    rpc_decoder_free(&d);
}

/* Messages before a bad one are delivered; then the error with the bad
 * message's index; then the decoder stays failed. */
static void test_error_after_good_and_sticky(void **state)
{
    (void)state;
    size_t n;
    unsigned char *b = hex("93 01 00 90  93 02 00 90  93 a1 78 00 90  93 03 00 90", &n);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 64);
    assert_int_equal(rpc_decoder_feed(&d, b, n), 0);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 2);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EPROTO);
    assert_string_equal(err.msg, "message 3: channel is a string, expected a positive integer");
    err_t err2 = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err2), -EPROTO);
    assert_string_equal(err2.msg, err.msg);
    assert_int_equal(rpc_decoder_feed(&d, b, 4), -EPROTO);
    assert_int_equal(rpc_decoder_next(&d, &m, NULL), -EPROTO);
    rpc_decoder_free(&d);

    /* the same with a scanner-level error (0xc1): feed reports it at once,
     * next still hands out the two good messages first */
    free(b);
    b = hex("93 01 00 90  93 02 00 90  93 03 00 91 c1 93 04 00 90", &n);
    rpc_decoder_init(&d, 64);
    assert_int_equal(rpc_decoder_feed(&d, b, n), -EPROTO);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 1);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 2);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EPROTO);
    assert_string_equal(err.msg, "message 3: not msgpack (byte 0xc1 at offset 4)");
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EPROTO);
    rpc_decoder_free(&d);
    free(b);
}

static void test_oversize(void **state)
{
    (void)state;
    /* exactly at the limit passes, one byte more fails */
    buf_t out = BUF_INIT(0);
    char body[100] = {0};
    assert_int_equal(rpc_encode(&out, 1, 0, "b", body, (size_t)50), 0);
    size_t exact = out.len; /* 93 01 00 91 c4 32 + 50 = 56 */
    assert_int_equal(exact, 56);
    rpc_decoder_t d;
    rpc_decoder_init(&d, exact);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_feed(&d, out.data, out.len), 0);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    rpc_decoder_free(&d);

    rpc_decoder_init(&d, exact - 1);
    /* refused as soon as the bin header is seen: 6 bytes are enough */
    assert_int_equal(rpc_decoder_feed(&d, out.data, 6), -EMSGSIZE);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EMSGSIZE);
    assert_string_equal(err.msg, "message 1: at least 56 bytes, over the limit of 55");
    assert_int_equal(rpc_decoder_feed(&d, out.data + 6, 1), -EMSGSIZE);
    rpc_decoder_free(&d);
    buf_free(&out);

    /* 5 bytes announcing 2^32-1 elements never reach msgpack-c */
    assert_decode_error("dd ff ff ff ff", -EMSGSIZE,
                        "message 1: at least 4294967300 bytes, over the limit of 4194304");
    assert_decode_error("93 01 00 91 db ff ff ff ff", -EMSGSIZE,
                        "message 1: at least 4294967304 bytes, over the limit of 4194304");
    assert_decode_error("93 01 00 df 80 00 00 00", -EMSGSIZE,
                        "message 1: at least 4294967304 bytes, over the limit of 4194304");
    /* a fixed-size value at the very end counts too */
    rpc_decoder_init(&d, 16);
    size_t n;
    unsigned char *b = hex("93 01 00 92 cf 00 00 00 00 00 00 00 01 cf 00 00 00 00", &n);
    assert_int_equal(rpc_decoder_feed(&d, b, n), -EMSGSIZE);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EMSGSIZE);
    assert_string_equal(err.msg, "message 1: at least 22 bytes, over the limit of 16");
    rpc_decoder_free(&d);
    free(b);

    /* the limit is per message: many small ones in a row are fine, and
     * the oversized one is reported with its own index after them */
    rpc_decoder_init(&d, 16);
    buf_t many = BUF_INIT(0);
    for (int i = 1; i <= 100; i++)
        assert_int_equal(rpc_encode(&many, (uint64_t)i, 0, "u", 1u), 0);
    assert_int_equal(rpc_encode(&many, 101, 0, "S", body, (size_t)20), 0);
    assert_int_equal(rpc_decoder_feed(&d, many.data, many.len), -EMSGSIZE);
    int got = 0, rc;
    while ((rc = rpc_decoder_next(&d, &m, &err)) == 1)
        got++;
    assert_int_equal(got, 100);
    assert_int_equal(rc, -EMSGSIZE);
    assert_string_equal(err.msg, "message 101: at least 25 bytes, over the limit of 16");
    rpc_decoder_free(&d);
    buf_free(&many);

    /* a limit below the minimum is raised to it */
    rpc_decoder_init(&d, 0);
    assert_int_equal(d.max, RPC_MAX_MESSAGE_MIN);
    rpc_decoder_free(&d);
}

/* Build [1, 0, [[[...]]]] with `levels` containers in total. */
static void nested(buf_t *out, int levels)
{
    buf_append(out, "\x93\x01\x00", 3);
    for (int i = 0; i < levels - 2; i++)
        buf_append(out, "\x91", 1);
    buf_append(out, "\x90", 1);
}

static void test_depth(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    nested(&out, RPC_MAX_DEPTH);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1024);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_feed(&d, out.data, out.len), 0);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    rpc_decoder_free(&d);
    buf_reset(&out);
    nested(&out, RPC_MAX_DEPTH + 1);
    rpc_decoder_init(&d, 1024);
    assert_int_equal(rpc_decoder_feed(&d, out.data, out.len), -EPROTO);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), -EPROTO);
    assert_string_equal(err.msg, "message 1: nested deeper than 32 levels");
    rpc_decoder_free(&d);
    buf_free(&out);
}

/* Every msgpack type inside args, including ext and floats, decodes. */
static void test_all_types(void **state)
{
    (void)state;
    rpc_msg_t m;
    err_t err = {0};
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1024);
    size_t n;
    unsigned char *b = hex("93 01 00 dc 00 0c"
                           " c0 c2 c3 ca 3f 80 00 00 cb 3f f0 00 00 00 00 00 00"
                           " d4 01 02 d8 01 00 01 02 03 04 05 06 07 08 09 0a 0b 0c 0d 0e 0f"
                           " c7 02 05 aa bb e0 d3 80 00 00 00 00 00 00 00"
                           " de 00 01 a1 6b a1 76 c5 00 01 7a",
                           &n);
    assert_int_equal(rpc_decoder_feed(&d, b, n), 0);
    free(b);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.nargs, 12);
    assert_int_equal(m.args[5].type, MSGPACK_OBJECT_EXT);
    assert_int_equal(m.args[7].type, MSGPACK_OBJECT_EXT);
    assert_int_equal(m.args[7].via.ext.size, 2);
    int64_t i;
    assert_int_equal(rpc_arg_int(&m, 8, &i, &err), 0);
    assert_int_equal(i, -32);
    assert_int_equal(rpc_arg_int(&m, 9, &i, &err), 0);
    assert_true(i == INT64_MIN);
    const msgpack_object_map *map;
    assert_int_equal(rpc_arg_map(&m, 10, &map, &err), 0);
    assert_int_equal(map->size, 1);
    const char *p;
    size_t len;
    assert_int_equal(rpc_arg_bytes(&m, 11, &p, &len, &err), 0);
    assert_int_equal(len, 1);
    assert_int_equal(p[0], 'z');
    rpc_decoder_free(&d);
}

static void test_arg_errors(void **state)
{
    (void)state;
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode(&out, 1, 0, "suD", "x", 5u, (int64_t)-1), 0);
    assert_int_equal(rpc_encode(&out, 1, 0, "U", (uint64_t)INT64_MAX + 1), 0);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1024);
    rpc_decoder_feed(&d, out.data, out.len);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    const char *p;
    size_t len;
    uint64_t u;
    int64_t i;
    bool b;
    const msgpack_object_array *a;
    const msgpack_object_map *map;
    const msgpack_object *o;

    assert_int_equal(rpc_arg_uint(&m, 0, &u, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 0 is a string, expected an unsigned integer");
    assert_int_equal(rpc_arg_str(&m, 1, &p, &len, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 1 is an unsigned integer, expected a string");
    assert_int_equal(rpc_arg_bytes(&m, 1, &p, &len, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 1 is an unsigned integer, expected a string or binary");
    assert_int_equal(rpc_arg_uint(&m, 2, &u, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 2 is a negative integer, expected an unsigned integer");
    assert_int_equal(rpc_arg_bool(&m, 0, &b, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 0 is a string, expected a boolean");
    assert_int_equal(rpc_arg_array(&m, 0, &a, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 0 is a string, expected an array");
    assert_int_equal(rpc_arg_map(&m, 1, &map, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 1 is an unsigned integer, expected a map");
    assert_int_equal(rpc_arg_int(&m, 0, &i, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 0 is a string, expected an integer");
    assert_int_equal(rpc_arg_str(&m, 3, &p, &len, &err), -EINVAL);
    assert_string_equal(err.msg, "argument 3 is missing (message has 3 arguments)");
    assert_int_equal(rpc_arg(&m, 2, &o, &err), 0);
    assert_int_equal(o->type, MSGPACK_OBJECT_NEGATIVE_INTEGER);
    /* NULL err is allowed */
    assert_int_equal(rpc_arg_uint(&m, 9, &u, NULL), -EINVAL);

    assert_int_equal(rpc_args_count(&m, 3, 3, &err), 0);
    assert_int_equal(rpc_args_count(&m, 1, 1, &err), -EINVAL);
    assert_string_equal(err.msg, "expected 1 argument, got 3");
    assert_int_equal(rpc_args_count(&m, 4, SIZE_MAX, &err), -EINVAL);
    assert_string_equal(err.msg, "expected at least 4 arguments, got 3");
    assert_int_equal(rpc_args_count(&m, 0, 2, &err), -EINVAL);
    assert_string_equal(err.msg, "expected 0 to 2 arguments, got 3");

    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(rpc_arg_int(&m, 0, &i, &err), -EINVAL);
    assert_string_equal(err.msg,
                        "argument 0 is 9223372036854775808, too large for a signed integer");
    assert_int_equal(rpc_arg_uint(&m, 0, &u, &err), 0);
    assert_true(u == (uint64_t)INT64_MAX + 1);
    rpc_decoder_free(&d);
    buf_free(&out);
}

static void test_encode_failures(void **state)
{
    (void)state;
    /* -ENOBUFS leaves what was there */
    buf_t out = BUF_INIT(20);
    buf_append_str(&out, "prefix");
    char body[32] = {0};
    assert_int_equal(rpc_encode(&out, 1, 0, "S", body, sizeof(body)), -ENOBUFS);
    assert_int_equal(out.len, 6);
    assert_string_equal(out.data, "prefix");
    assert_int_equal(rpc_encode(&out, 1, 0, "s", "fits"), 0);
    assert_int_equal(out.len, 6 + 9);
    buf_free(&out);

    /* wrong counts are caught and rolled back */
    buf_init(&out, 0);
    buf_append_str(&out, "fifteen bytes..");
    rpc_enc_t e;
    rpc_enc_begin(&e, &out, 1, 0, 2, 0);
    msgpack_pack_nil(&e.pk);
    assert_int_equal(rpc_enc_end(&e), -EINVAL);
    assert_int_equal(out.len, 15);
    rpc_enc_begin(&e, &out, 1, 0, 0, 0);
    msgpack_pack_nil(&e.pk);
    assert_int_equal(rpc_enc_end(&e), -EINVAL);
    assert_int_equal(out.len, 15);
    rpc_enc_begin(&e, &out, 1, 0, 0, 2);
    rpc_enc_header(&e, "a", "b", 1);
    assert_int_equal(rpc_enc_end(&e), -EINVAL);
    assert_int_equal(out.len, 15);
    buf_free(&out);

    /* malformed formats */
    buf_t o2 = BUF_INIT(0);
    assert_int_equal(rpc_encode(&o2, 1, 0, "x"), -EINVAL);
    assert_int_equal(rpc_encode(&o2, 1, 0, "[u", 1u), -EINVAL);
    assert_int_equal(rpc_encode(&o2, 1, 0, "u]", 1u), -EINVAL);
    assert_int_equal(o2.len, 0);
    /* [] is an empty nested array */
    assert_int_equal(rpc_encode(&o2, 1, 0, "[]"), 0);
    assert_int_equal(o2.len, 5);
    assert_memory_equal(o2.data, "\x93\x01\x00\x91\x90", 5);
    buf_free(&o2);
}

static void test_encode_object(void **state)
{
    (void)state;
    msgpack_object items[2] = {
        {.type = MSGPACK_OBJECT_POSITIVE_INTEGER, .via.u64 = 7},
        {.type = MSGPACK_OBJECT_STR, .via.str = {3, "abc"}},
    };
    msgpack_object args = {.type = MSGPACK_OBJECT_ARRAY, .via.array = {2, items}};
    buf_t out = BUF_INIT(0);
    assert_int_equal(rpc_encode_object(&out, 4, 1, &args), 0);
    assert_int_equal(rpc_encode_object(&out, 5, 2, NULL), 0);
    assert_int_equal(rpc_encode_object(&out, 5, 2, &items[0]), -EINVAL);
    rpc_decoder_t d;
    rpc_decoder_init(&d, 1024);
    rpc_decoder_feed(&d, out.data, out.len);
    rpc_msg_t m;
    err_t err = {0};
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 4);
    assert_int_equal(m.nargs, 2);
    msgpack_object got = {.type = MSGPACK_OBJECT_ARRAY,
                          .via.array = {(uint32_t)m.nargs, (msgpack_object *)m.args}};
    assert_true(msgpack_object_equal(got, args));
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 1);
    assert_int_equal(m.channel, 5);
    assert_int_equal(m.type, 2);
    assert_int_equal(m.nargs, 0);
    assert_int_equal(rpc_decoder_next(&d, &m, &err), 0);
    rpc_decoder_free(&d);
    buf_free(&out);
}

static void test_channels(void **state)
{
    (void)state;
    rpc_channels_t c;
    rpc_channels_init(&c, RPC_CONTROL_CHANNEL);
    assert_int_equal(rpc_channels_next(&c), 2);
    assert_int_equal(rpc_channels_next(&c), 3);

    rpc_channels_t r;
    rpc_channels_init(&r, 0);
    err_t err = {0};
    assert_int_equal(rpc_channels_open(&r, 1, &err), 0);
    assert_int_equal(rpc_channels_open(&r, 7, &err), 0); /* gaps are fine */
    assert_int_equal(rpc_channels_open(&r, 5, &err), -EPROTO);
    assert_string_equal(err.msg, "channel 5 goes backwards (last 7)");
    assert_int_equal(rpc_channels_open(&r, 7, &err), -EPROTO);
    assert_string_equal(err.msg, "channel 7 reused (last 7)");
    assert_int_equal(r.last, 7);
    assert_int_equal(rpc_channels_open(&r, 8, NULL), 0);
    assert_int_equal(rpc_channels_open(&r, UINT64_MAX, NULL), 0);
    assert_int_equal(rpc_channels_open(&r, 9, NULL), -EPROTO);
}

static void test_type_names(void **state)
{
    (void)state;
    msgpack_object o = {.type = MSGPACK_OBJECT_FLOAT32};
    assert_string_equal(rpc_object_type_name(&o), "a float");
    o.type = MSGPACK_OBJECT_EXT;
    assert_string_equal(rpc_object_type_name(&o), "an extension");
    o.type = MSGPACK_OBJECT_BIN;
    assert_string_equal(rpc_object_type_name(&o), "binary");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hex_example),
        cmocka_unit_test(test_roundtrip_format),
        cmocka_unit_test(test_roundtrip_headers),
        cmocka_unit_test(test_byte_by_byte),
        cmocka_unit_test(test_one_feed),
        cmocka_unit_test(test_random_splits),
        cmocka_unit_test(test_message_outlives_feed),
        cmocka_unit_test(test_partial),
        cmocka_unit_test(test_malformed_shape),
        cmocka_unit_test(test_malformed_fields),
        cmocka_unit_test(test_malformed_headers),
        cmocka_unit_test(test_not_msgpack),
        cmocka_unit_test(test_error_after_good_and_sticky),
        cmocka_unit_test(test_oversize),
        cmocka_unit_test(test_depth),
        cmocka_unit_test(test_all_types),
        cmocka_unit_test(test_arg_errors),
        cmocka_unit_test(test_encode_failures),
        cmocka_unit_test(test_encode_object),
        cmocka_unit_test(test_channels),
        cmocka_unit_test(test_type_names),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
