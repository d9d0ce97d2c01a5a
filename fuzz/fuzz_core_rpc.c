/* Fuzz the RPC decoder. Input: byte 0 picks the message size limit, byte 1
 * seeds the split points, the rest is the stream. The stream is decoded
 * twice, in one feed and in pieces, draining after every feed; both runs
 * must agree message for message and on the final error. Every message is
 * re-encoded and decoded again to check the encoder round-trips it, and the
 * accessors are run on every argument. */
#include "core/buf.h"
#include "core/err.h"
#include "core/rpc.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_core_rpc: %s\n", what);
        abort();
    }
}

static volatile char sink;

static void poke_accessors(const rpc_msg_t *m)
{
    err_t err;
    const char *p;
    size_t len;
    uint64_t u;
    int64_t i;
    bool b;
    const msgpack_object_array *a;
    const msgpack_object_map *map;
    const msgpack_object *o;
    for (size_t k = 0; k <= m->nargs; k++) {
        rpc_arg(m, k, &o, &err);
        /* touch both ends so ASan checks the memory is live */
        if (rpc_arg_str(m, k, &p, &len, &err) == 0 && len)
            sink = p[0];
        if (rpc_arg_bytes(m, k, &p, &len, &err) == 0 && len)
            sink = p[len - 1];
        rpc_arg_uint(m, k, &u, &err);
        rpc_arg_int(m, k, &i, &err);
        rpc_arg_bool(m, k, &b, &err);
        rpc_arg_array(m, k, &a, &err);
        rpc_arg_map(m, k, &map, &err);
    }
    rpc_args_count(m, 1, 2, &err);
    rpc_header_t h;
    for (size_t k = 0; rpc_msg_header_at(m, k, &h) == 0; k++) {
        check(k < m->nheaders, "header index");
        const char *v;
        size_t vl;
        if (h.value_len)
            sink = h.value[h.value_len - 1];
        char name[64];
        if (h.name_len < sizeof(name) && !memchr(h.name, '\0', h.name_len)) {
            memcpy(name, h.name, h.name_len);
            name[h.name_len] = '\0';
            check(rpc_msg_header(m, name, &v, &vl) == 0, "header lookup");
        }
    }
}

/* Re-encode m (args and headers) into out. */
static int reencode(const rpc_msg_t *m, buf_t *out)
{
    rpc_enc_t e;
    rpc_enc_begin(&e, out, m->channel, m->type, (uint32_t)m->nargs, (uint32_t)m->nheaders);
    for (size_t k = 0; k < m->nargs; k++)
        msgpack_pack_object(&e.pk, m->args[k]);
    if (m->nheaders) {
        /* rpc_enc_header takes NUL-terminated names; pack pairs directly to
         * keep names with any bytes */
        msgpack_pack_array(&e.pk, m->nheaders);
        e.hdr_started = true;
        for (size_t k = 0; k < m->nheaders; k++)
            msgpack_pack_object(&e.pk, m->headers[k]);
    }
    return rpc_enc_end(&e);
}

/* Decode `data` split by `seed` (0: one feed). Appends each message's
 * re-encoding to log, returns the final result of next. */
static int run(const uint8_t *data, size_t n, size_t max, unsigned seed, buf_t *log, char *errmsg)
{
    rpc_decoder_t d;
    rpc_decoder_init(&d, max);
    size_t off = 0;
    unsigned st = seed;
    int rc = 0;
    err_t err = {0};
    do {
        size_t len = n - off;
        if (seed) {
            st = st * 1103515245u + 12345u;
            size_t piece = (st >> 16) % 9 == 0 ? (st >> 8) % 4096 : (st >> 16) % 7;
            if (piece < len)
                len = piece;
        }
        rpc_decoder_feed(&d, data + off, len);
        off += len;
        rpc_msg_t m;
        while ((rc = rpc_decoder_next(&d, &m, &err)) == 1) {
            check(m.size <= (max < RPC_MAX_MESSAGE_MIN ? RPC_MAX_MESSAGE_MIN : max),
                  "message over limit");
            check(m.channel >= 1, "channel 0 accepted");
            poke_accessors(&m);
            size_t before = log->len;
            check(reencode(&m, log) == 0, "re-encode failed");
            /* what we encode must decode to the same message */
            rpc_decoder_t d2;
            rpc_decoder_init(&d2, log->len - before);
            rpc_decoder_feed(&d2, log->data + before, log->len - before);
            rpc_msg_t m2;
            check(rpc_decoder_next(&d2, &m2, NULL) == 1, "re-encoded message does not decode");
            check(m2.channel == m.channel && m2.type == m.type && m2.nargs == m.nargs &&
                      m2.nheaders == m.nheaders,
                  "round trip changed the message");
            /* compare encodings, not objects: NaN floats never compare equal */
            buf_t again = BUF_INIT(0);
            check(reencode(&m2, &again) == 0, "second re-encode failed");
            check(again.len == log->len - before &&
                      memcmp(again.data, log->data + before, again.len) == 0,
                  "round trip changed an argument");
            buf_free(&again);
            check(rpc_decoder_next(&d2, &m2, NULL) == 0, "re-encoding has trailing bytes");
            rpc_decoder_free(&d2);
        }
        if (rc < 0) {
            /* failure is sticky */
            err_t err2 = {0};
            check(rpc_decoder_next(&d, &m, &err2) == rc, "error not sticky");
            check(strcmp(err.msg, err2.msg) == 0, "error message changed");
            check(rpc_decoder_feed(&d, data, n) == rc, "feed after error");
            snprintf(errmsg, ERR_MSG_MAX, "%s", err.msg);
            break;
        }
    } while (off < n);
    rpc_decoder_free(&d);
    return rc;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const size_t limits[] = {16, 32, 64, 256, 4096, 65536};
    size_t max = limits[data[0] % 6];
    unsigned seed = data[1] | 1u;
    data += 2;
    size -= 2;
    buf_t a = BUF_INIT(0), b = BUF_INIT(0);
    char ea[ERR_MSG_MAX] = "", eb[ERR_MSG_MAX] = "";
    int ra = run(data, size, max, 0, &a, ea);
    int rb = run(data, size, max, seed, &b, eb);
    check(ra == rb, "split changed the result");
    check(strcmp(ea, eb) == 0, "split changed the error message");
    check(a.len == b.len && (a.len == 0 || memcmp(a.data, b.data, a.len) == 0),
          "split changed the messages");
    buf_free(&a);
    buf_free(&b);
    return 0;
}
