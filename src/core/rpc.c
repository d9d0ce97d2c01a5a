#include "core/rpc.h"

#include "core/alloc.h"
#include "core/err.h"

#include <errno.h>
#include <jansson.h>
#include <string.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>

/* Initial msgpack-c buffer: small, since every connection owns a decoder;
 * msgpack-c doubles it as messages need. */
#define RPC_UNPACKER_INIT 8192

/* ---- framing scanner --------------------------------------------------- */

typedef enum rpc_scan_rc {
    RPC_SCAN_OK = 0,
    RPC_SCAN_BAD_BYTE,
    RPC_SCAN_TOO_DEEP,
    RPC_SCAN_TOO_BIG,
} rpc_scan_rc_t;

static void rpc_scan_init(rpc_scan_t *s)
{
    memset(s, 0, sizeof(*s));
}

static uint64_t rpc_be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* An object's header is complete: account for it in the level it belongs
 * to, open a level for a container, and check that the smallest possible
 * message (every announced object one byte) still fits in `max`. Checking
 * here, at the header, is what refuses an oversized message before its
 * bytes are buffered. */
static rpc_scan_rc_t rpc_scan_object(rpc_scan_t *s, bool container, uint64_t count,
                                     uint64_t payload, uint64_t max)
{
    s->left[s->depth - 1]--;
    s->pending--;
    if (container) {
        if (s->depth - 1 >= RPC_MAX_DEPTH)
            return RPC_SCAN_TOO_DEEP;
        if (count) {
            s->left[s->depth++] = count;
            s->pending += count;
        }
    } else {
        s->skip = payload;
    }
    if (s->msg_bytes + s->skip + s->pending > max)
        return RPC_SCAN_TOO_BIG;
    while (s->depth > 0 && s->left[s->depth - 1] == 0)
        s->depth--;
    return RPC_SCAN_OK;
}

/* Bytes of length that follow a variable-size header byte, or 0. */
static unsigned rpc_scan_len_bytes(unsigned char c)
{
    switch (c) {
    case 0xc4:
    case 0xc7:
    case 0xd9: return 1;
    case 0xc5:
    case 0xc8:
    case 0xda:
    case 0xdc:
    case 0xde: return 2;
    case 0xc6:
    case 0xc9:
    case 0xdb:
    case 0xdd:
    case 0xdf: return 4;
    default: return 0;
    }
}

/* The first byte of an object, when it is the whole header. */
static rpc_scan_rc_t rpc_scan_first(rpc_scan_t *s, unsigned char c, uint64_t max)
{
    if (c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3)
        return rpc_scan_object(s, false, 0, 0, max);
    if (c <= 0x8f)
        return rpc_scan_object(s, true, 2u * (c & 0x0f), 0, max);
    if (c <= 0x9f)
        return rpc_scan_object(s, true, c & 0x0f, 0, max);
    if (c <= 0xbf)
        return rpc_scan_object(s, false, 0, c & 0x1f, max);
    switch (c) {
    case 0xca: return rpc_scan_object(s, false, 0, 4, max);
    case 0xcb: return rpc_scan_object(s, false, 0, 8, max);
    case 0xcc:
    case 0xd0: return rpc_scan_object(s, false, 0, 1, max);
    case 0xcd:
    case 0xd1: return rpc_scan_object(s, false, 0, 2, max);
    case 0xce:
    case 0xd2: return rpc_scan_object(s, false, 0, 4, max);
    case 0xcf:
    case 0xd3: return rpc_scan_object(s, false, 0, 8, max);
    case 0xd4: return rpc_scan_object(s, false, 0, 1 + 1, max);
    case 0xd5: return rpc_scan_object(s, false, 0, 1 + 2, max);
    case 0xd6: return rpc_scan_object(s, false, 0, 1 + 4, max);
    case 0xd7: return rpc_scan_object(s, false, 0, 1 + 8, max);
    case 0xd8: return rpc_scan_object(s, false, 0, 1 + 16, max);
    default: break;
    }
    unsigned k = rpc_scan_len_bytes(c);
    if (!k)
        return RPC_SCAN_BAD_BYTE; /* 0xc1, never used */
    s->hdr[0] = c;
    s->hdr_len = 1;
    s->hdr_need = 1 + k;
    return RPC_SCAN_OK;
}

/* A multi-byte header (length-prefixed str/bin/ext/array/map) is complete. */
static rpc_scan_rc_t rpc_scan_header(rpc_scan_t *s, uint64_t max)
{
    unsigned char c = s->hdr[0];
    uint64_t len = rpc_be(s->hdr + 1, s->hdr_need - 1);
    s->hdr_need = s->hdr_len = 0;
    switch (c) {
    case 0xc7:
    case 0xc8:
    case 0xc9: return rpc_scan_object(s, false, 0, len + 1, max);
    case 0xdc:
    case 0xdd: return rpc_scan_object(s, true, len, 0, max);
    case 0xde:
    case 0xdf: return rpc_scan_object(s, true, 2 * len, 0, max);
    default: return rpc_scan_object(s, false, 0, len, max); /* str, bin */
    }
}

/* Walk n bytes of the stream. Stops at the first bad message and returns
 * why; *good is set to the end of the last message completed inside these
 * bytes and *completed counts them. The scanner never looks at values, only
 * at lengths, so it is cheap next to msgpack-c's full decode. */
static rpc_scan_rc_t rpc_scan_feed(rpc_scan_t *s, const unsigned char *p, size_t n, uint64_t max,
                                   size_t *good, uint64_t *completed)
{
    size_t i = 0;
    *good = 0;
    *completed = 0;
    while (i < n) {
        if (s->skip) {
            uint64_t take = s->skip < n - i ? s->skip : n - i;
            s->skip -= take;
            s->msg_bytes += take;
            i += (size_t)take;
        } else {
            unsigned char c = p[i++];
            if (s->depth == 0 && s->hdr_need == 0) {
                s->messages++;
                s->msg_bytes = 0;
                s->depth = 1;
                s->left[0] = 1;
                s->pending = 1;
            }
            s->msg_bytes++;
            rpc_scan_rc_t rc;
            if (s->hdr_need) {
                s->hdr[s->hdr_len++] = c;
                if (s->hdr_len < s->hdr_need)
                    continue;
                rc = rpc_scan_header(s, max);
            } else {
                rc = rpc_scan_first(s, c, max);
            }
            if (rc != RPC_SCAN_OK)
                return rc;
        }
        if (s->depth == 0 && s->skip == 0 && s->hdr_need == 0) {
            *good = i;
            (*completed)++;
        }
    }
    return RPC_SCAN_OK;
}

/* ---- decoder ------------------------------------------------------------ */

void rpc_decoder_init(rpc_decoder_t *d, size_t max_message_bytes)
{
    memset(d, 0, sizeof(*d));
    if (!msgpack_unpacker_init(&d->unpacker, RPC_UNPACKER_INIT))
        abort(); /* only fails on OOM, which drover treats as fatal */
    msgpack_unpacked_init(&d->result);
    rpc_scan_init(&d->scan);
    d->max = max_message_bytes < RPC_MAX_MESSAGE_MIN ? RPC_MAX_MESSAGE_MIN : max_message_bytes;
}

void rpc_decoder_free(rpc_decoder_t *d)
{
    msgpack_unpacked_destroy(&d->result);
    msgpack_unpacker_destroy(&d->unpacker);
    memset(d, 0, sizeof(*d));
}

size_t rpc_decoder_buffered(const rpc_decoder_t *d)
{
    return d->buffered;
}

static int rpc_decoder_fail(rpc_decoder_t *d, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int rpc_decoder_fail(rpc_decoder_t *d, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err.msg, sizeof(d->err.msg), fmt, ap);
    va_end(ap);
    d->err.code = code;
    d->rc = code;
    return code;
}

int rpc_decoder_feed(rpc_decoder_t *d, const void *bytes, size_t n)
{
    if (d->rc)
        return d->rc;
    size_t good;
    uint64_t completed;
    rpc_scan_rc_t src = rpc_scan_feed(&d->scan, bytes, n, d->max, &good, &completed);
    /* After a bad message only the complete messages before it are kept:
     * the rest can never be used. */
    size_t keep = src == RPC_SCAN_OK ? n : good;
    if (keep) {
        if (!msgpack_unpacker_reserve_buffer(&d->unpacker, keep))
            abort();
        memcpy(msgpack_unpacker_buffer(&d->unpacker), bytes, keep);
        msgpack_unpacker_buffer_consumed(&d->unpacker, keep);
        d->buffered += keep;
    }
    d->complete += completed;
    const rpc_scan_t *s = &d->scan;
    switch (src) {
    case RPC_SCAN_OK: return 0;
    case RPC_SCAN_BAD_BYTE:
        rpc_decoder_fail(d, -EPROTO,
                         "message %" PRIu64 ": not msgpack (byte 0xc1 at offset %" PRIu64 ")",
                         s->messages, s->msg_bytes - 1);
        break;
    case RPC_SCAN_TOO_DEEP:
        rpc_decoder_fail(d, -EPROTO, "message %" PRIu64 ": nested deeper than %d levels",
                         s->messages, RPC_MAX_DEPTH);
        break;
    case RPC_SCAN_TOO_BIG:
        rpc_decoder_fail(d, -EMSGSIZE,
                         "message %" PRIu64 ": at least %" PRIu64 " bytes, over the limit of %zu",
                         s->messages, s->msg_bytes + s->skip + s->pending, d->max);
        break;
    }
    d->rc_pending = true;
    return d->rc;
}

const char *rpc_object_type_name(const msgpack_object *o)
{
    switch (o->type) {
    case MSGPACK_OBJECT_NIL: return "nil";
    case MSGPACK_OBJECT_BOOLEAN: return "a boolean";
    case MSGPACK_OBJECT_POSITIVE_INTEGER: return "an unsigned integer";
    case MSGPACK_OBJECT_NEGATIVE_INTEGER: return "a negative integer";
    case MSGPACK_OBJECT_FLOAT32:
    case MSGPACK_OBJECT_FLOAT64: return "a float";
    case MSGPACK_OBJECT_STR: return "a string";
    case MSGPACK_OBJECT_BIN: return "binary";
    case MSGPACK_OBJECT_ARRAY: return "an array";
    case MSGPACK_OBJECT_MAP: return "a map";
    case MSGPACK_OBJECT_EXT: return "an extension";
    }
    return "an unknown type";
}

static int rpc_msg_fail(rpc_decoder_t *d, uint64_t idx, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Fail the decoder with "message N" followed by fmt, so every shape error
 * names the message's position on the stream. */
static int rpc_msg_fail(rpc_decoder_t *d, uint64_t idx, const char *fmt, ...)
{
    char what[ERR_MSG_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof(what), fmt, ap);
    va_end(ap);
    return rpc_decoder_fail(d, -EPROTO, "message %" PRIu64 "%s", idx, what);
}

/* Check the [channel, type, args, headers?] shape once, so handlers and the
 * accessors can trust it. */
static int rpc_msg_check(rpc_decoder_t *d, const msgpack_object *o, rpc_msg_t *m)
{
    uint64_t idx = m->index;
    if (o->type != MSGPACK_OBJECT_ARRAY)
        return rpc_msg_fail(d, idx, " is %s, expected an array [channel, type, args]",
                            rpc_object_type_name(o));
    const msgpack_object_array *a = &o->via.array;
    if (a->size != 3 && a->size != 4)
        return rpc_msg_fail(
            d, idx, " has %" PRIu32 " elements, expected 3 or 4 [channel, type, args, headers]",
            a->size);
    const msgpack_object *ch = &a->ptr[0], *ty = &a->ptr[1], *args = &a->ptr[2];
    if (ch->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return rpc_msg_fail(d, idx, ": channel is %s, expected a positive integer",
                            rpc_object_type_name(ch));
    if (ch->via.u64 == 0)
        return rpc_msg_fail(d, idx, ": channel is 0, expected a positive integer");
    if (ty->type != MSGPACK_OBJECT_POSITIVE_INTEGER)
        return rpc_msg_fail(d, idx, ": type is %s, expected an unsigned integer",
                            rpc_object_type_name(ty));
    if (args->type != MSGPACK_OBJECT_ARRAY)
        return rpc_msg_fail(d, idx, ": args is %s, expected an array", rpc_object_type_name(args));
    m->channel = ch->via.u64;
    m->type = ty->via.u64;
    m->nargs = args->via.array.size;
    m->args = m->nargs ? args->via.array.ptr : NULL;
    m->headers = NULL;
    m->nheaders = 0;
    if (a->size == 3)
        return 0;
    const msgpack_object *h = &a->ptr[3];
    if (h->type != MSGPACK_OBJECT_ARRAY)
        return rpc_msg_fail(d, idx, ": headers is %s, expected an array of [name, value] pairs",
                            rpc_object_type_name(h));
    for (uint32_t i = 0; i < h->via.array.size; i++) {
        const msgpack_object *p = &h->via.array.ptr[i];
        if (p->type != MSGPACK_OBJECT_ARRAY || p->via.array.size != 2)
            return rpc_msg_fail(d, idx, ": header %" PRIu32 " is %s, expected a [name, value] pair",
                                i,
                                p->type == MSGPACK_OBJECT_ARRAY ? "an array of another size"
                                                                : rpc_object_type_name(p));
        const msgpack_object *name = &p->via.array.ptr[0], *val = &p->via.array.ptr[1];
        if (name->type != MSGPACK_OBJECT_STR)
            return rpc_msg_fail(d, idx, ": header %" PRIu32 " name is %s, expected a string", i,
                                rpc_object_type_name(name));
        if (val->type != MSGPACK_OBJECT_STR && val->type != MSGPACK_OBJECT_BIN)
            return rpc_msg_fail(d, idx,
                                ": header %" PRIu32 " value is %s, expected a string or binary", i,
                                rpc_object_type_name(val));
    }
    m->nheaders = h->via.array.size;
    m->headers = m->nheaders ? h->via.array.ptr : NULL;
    return 0;
}

static int rpc_decoder_error(const rpc_decoder_t *d, err_t *err)
{
    if (err) {
        err->code = d->rc;
        memcpy(err->msg, d->err.msg, sizeof(err->msg));
    }
    return d->rc;
}

int rpc_decoder_next(rpc_decoder_t *d, rpc_msg_t *msg, err_t *err)
{
    /* The previous message's zone (and its hold on msgpack-c's buffer) goes
     * now: that is the lifetime promised for rpc_msg_t. */
    msgpack_unpacked_destroy(&d->result);
    if (d->rc && !d->rc_pending)
        return rpc_decoder_error(d, err);
    if (d->taken == d->complete) {
        /* A scanner error waits until the messages before it are taken. */
        d->rc_pending = false;
        return d->rc ? rpc_decoder_error(d, err) : 0;
    }
    size_t size = 0;
    msgpack_unpack_return ret = msgpack_unpacker_next_with_size(&d->unpacker, &d->result, &size);
    d->taken++;
    if (ret != MSGPACK_UNPACK_SUCCESS) {
        /* The scanner saw a whole message here, so msgpack-c disagreeing is
         * a bug somewhere; fail the stream rather than guess. */
        msgpack_unpacked_destroy(&d->result);
        d->rc_pending = false;
        rpc_decoder_fail(d, -EPROTO, "message %" PRIu64 ": msgpack-c could not decode it (%d)",
                         d->taken, (int)ret);
        return rpc_decoder_error(d, err);
    }
    d->buffered -= size < d->buffered ? size : d->buffered;
    memset(msg, 0, sizeof(*msg));
    msg->index = d->taken;
    msg->size = size;
    if (rpc_msg_check(d, &d->result.data, msg) < 0) {
        msgpack_unpacked_destroy(&d->result);
        memset(msg, 0, sizeof(*msg));
        d->rc_pending = false;
        return rpc_decoder_error(d, err);
    }
    return 1;
}

/* ---- encoder ------------------------------------------------------------ */

/* msgpack-c's packer write callback: append to the bounded buffer, and
 * after the first failure write nothing more so end() can roll back. */
static int rpc_enc_write(void *data, const char *p, size_t n)
{
    rpc_enc_t *e = data;
    if (e->rc)
        return -1;
    int rc = buf_append(e->out, p, n);
    if (rc) {
        e->rc = rc;
        return -1;
    }
    return 0;
}

void rpc_enc_begin(rpc_enc_t *e, buf_t *out, uint64_t channel, uint64_t type, uint32_t nargs,
                   uint32_t nheaders)
{
    memset(e, 0, sizeof(*e));
    e->out = out;
    e->start = out->len;
    e->nheaders = nheaders;
    msgpack_packer_init(&e->pk, e, rpc_enc_write);
    msgpack_pack_array(&e->pk, nheaders ? 4 : 3);
    msgpack_pack_uint64(&e->pk, channel);
    msgpack_pack_uint64(&e->pk, type);
    msgpack_pack_array(&e->pk, nargs);
}

static void rpc_enc_header_any(rpc_enc_t *e, const char *name, const void *value, size_t len,
                               bool bin)
{
    if (!e->hdr_started) {
        e->hdr_started = true;
        msgpack_pack_array(&e->pk, e->nheaders);
    }
    size_t nl = strlen(name);
    if (nl > UINT32_MAX || len > UINT32_MAX) {
        if (!e->rc)
            e->rc = -EINVAL;
        return;
    }
    msgpack_pack_array(&e->pk, 2);
    msgpack_pack_str_with_body(&e->pk, name, nl);
    if (bin)
        msgpack_pack_bin_with_body(&e->pk, value, len);
    else
        msgpack_pack_str_with_body(&e->pk, value, len);
}

void rpc_enc_header(rpc_enc_t *e, const char *name, const void *value, size_t len)
{
    rpc_enc_header_any(e, name, value, len, false);
}

void rpc_enc_header_bin(rpc_enc_t *e, const char *name, const void *value, size_t len)
{
    rpc_enc_header_any(e, name, value, len, true);
}

int rpc_enc_end(rpc_enc_t *e)
{
    buf_t *out = e->out;
    if (!e->rc) {
        /* Re-scan what was packed: a wrong arg or header count would
         * otherwise desynchronise the peer's stream, far from the bug. */
        rpc_scan_t s;
        rpc_scan_init(&s);
        size_t good;
        uint64_t completed;
        const unsigned char *p = (const unsigned char *)out->data + e->start;
        rpc_scan_rc_t src =
            rpc_scan_feed(&s, p, out->len - e->start, UINT64_MAX, &good, &completed);
        if (src != RPC_SCAN_OK || completed != 1 || good != out->len - e->start)
            e->rc = -EINVAL;
    }
    if (e->rc) {
        out->len = e->start;
        if (out->data)
            out->data[out->len] = '\0';
        return e->rc;
    }
    return 0;
}

/* Items at the current nesting level of fmt, up to the matching ']' or the
 * end; -1 for an unbalanced or unknown format. */
static long rpc_fmt_count(const char *f)
{
    long n = 0;
    int depth = 0;
    for (; *f; f++) {
        switch (*f) {
        case ' ':
        case ',': break;
        case '[':
            if (depth == 0)
                n++;
            depth++;
            break;
        case ']':
            if (depth == 0)
                return n;
            depth--;
            break;
        case 'u':
        case 'U':
        case 'd':
        case 'D':
        case 's':
        case 'S':
        case 'b':
        case 't':
        case 'n':
        case 'o':
            if (depth == 0)
                n++;
            break;
        default: return -1;
        }
    }
    return depth == 0 ? n : -1;
}

/* Pack items from *fmt until its end or a ']' (consumed), advancing *fmt. */
static int rpc_fmt_pack(rpc_enc_t *e, const char **fmt, va_list *ap, bool nested)
{
    msgpack_packer *pk = &e->pk;
    for (;;) {
        char c = **fmt;
        if (!c)
            return nested ? -EINVAL : 0;
        (*fmt)++;
        switch (c) {
        case ' ':
        case ',': break;
        case ']': return nested ? 0 : -EINVAL;
        case '[': {
            long n = rpc_fmt_count(*fmt);
            if (n < 0 || n > UINT32_MAX)
                return -EINVAL;
            msgpack_pack_array(pk, (size_t)n);
            int rc = rpc_fmt_pack(e, fmt, ap, true);
            if (rc)
                return rc;
            break;
        }
        case 'u': msgpack_pack_unsigned_int(pk, va_arg(*ap, unsigned)); break;
        case 'U': msgpack_pack_uint64(pk, va_arg(*ap, uint64_t)); break;
        case 'd': msgpack_pack_int(pk, va_arg(*ap, int)); break;
        case 'D': msgpack_pack_int64(pk, va_arg(*ap, int64_t)); break;
        case 't':
            if (va_arg(*ap, int))
                msgpack_pack_true(pk);
            else
                msgpack_pack_false(pk);
            break;
        case 'n': msgpack_pack_nil(pk); break;
        case 's': {
            const char *s = va_arg(*ap, const char *);
            if (s)
                msgpack_pack_str_with_body(pk, s, strlen(s));
            else
                msgpack_pack_nil(pk);
            break;
        }
        case 'S':
        case 'b': {
            const char *p = va_arg(*ap, const char *);
            size_t len = va_arg(*ap, size_t);
            if (len > UINT32_MAX)
                return -EINVAL;
            if (c == 'S')
                msgpack_pack_str_with_body(pk, p, len);
            else
                msgpack_pack_bin_with_body(pk, p, len);
            break;
        }
        case 'o': msgpack_pack_object(pk, *va_arg(*ap, const msgpack_object *)); break;
        default: return -EINVAL;
        }
    }
}

static int rpc_enc_vpack(rpc_enc_t *e, const char *fmt, va_list ap)
{
    va_list aq;
    va_copy(aq, ap);
    int rc = rpc_fmt_pack(e, &fmt, &aq, false);
    va_end(aq);
    if (rc && !e->rc)
        e->rc = rc;
    return e->rc;
}

int rpc_enc_pack(rpc_enc_t *e, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int rc = rpc_enc_vpack(e, fmt, ap);
    va_end(ap);
    return rc;
}

int rpc_encode(buf_t *out, uint64_t channel, uint64_t type, const char *fmt, ...)
{
    long n = rpc_fmt_count(fmt);
    if (n < 0 || n > UINT32_MAX)
        return -EINVAL;
    rpc_enc_t e;
    rpc_enc_begin(&e, out, channel, type, (uint32_t)n, 0);
    va_list ap;
    va_start(ap, fmt);
    rpc_enc_vpack(&e, fmt, ap);
    va_end(ap);
    return rpc_enc_end(&e);
}

int rpc_encode_object(buf_t *out, uint64_t channel, uint64_t type, const msgpack_object *args)
{
    if (args && args->type != MSGPACK_OBJECT_ARRAY)
        return -EINVAL;
    uint32_t n = args ? args->via.array.size : 0;
    rpc_enc_t e;
    rpc_enc_begin(&e, out, channel, type, n, 0);
    for (uint32_t i = 0; i < n; i++)
        msgpack_pack_object(&e.pk, args->via.array.ptr[i]);
    return rpc_enc_end(&e);
}

/* ---- reading args and headers ------------------------------------------ */

int rpc_args_count(const rpc_msg_t *m, size_t min, size_t max, err_t *err)
{
    if (m->nargs >= min && m->nargs <= max)
        return 0;
    if (min == max)
        return err_set(err, -EINVAL, "expected %zu argument%s, got %zu", min, min == 1 ? "" : "s",
                       m->nargs);
    if (max == SIZE_MAX)
        return err_set(err, -EINVAL, "expected at least %zu argument%s, got %zu", min,
                       min == 1 ? "" : "s", m->nargs);
    return err_set(err, -EINVAL, "expected %zu to %zu arguments, got %zu", min, max, m->nargs);
}

int rpc_arg(const rpc_msg_t *m, size_t i, const msgpack_object **out, err_t *err)
{
    if (i >= m->nargs)
        return err_set(err, -EINVAL, "argument %zu is missing (message has %zu argument%s)", i,
                       m->nargs, m->nargs == 1 ? "" : "s");
    *out = &m->args[i];
    return 0;
}

/* Fetch argument i and check its type in one step, so every accessor gives
 * the same "argument N is X, expected Y" message. */
static const msgpack_object *rpc_arg_typed(const rpc_msg_t *m, size_t i, msgpack_object_type t1,
                                           msgpack_object_type t2, const char *want, int *rc,
                                           err_t *err)
{
    const msgpack_object *o = NULL;
    *rc = rpc_arg(m, i, &o, err);
    if (*rc)
        return NULL;
    if (o->type != t1 && o->type != t2) {
        *rc = err_set(err, -EINVAL, "argument %zu is %s, expected %s", i, rpc_object_type_name(o),
                      want);
        return NULL;
    }
    return o;
}

int rpc_arg_str(const rpc_msg_t *m, size_t i, const char **p, size_t *len, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_STR, MSGPACK_OBJECT_STR, "a string", &rc, err);
    if (!o)
        return rc;
    *p = o->via.str.ptr;
    *len = o->via.str.size;
    return 0;
}

int rpc_arg_bytes(const rpc_msg_t *m, size_t i, const char **p, size_t *len, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_STR, MSGPACK_OBJECT_BIN, "a string or binary", &rc, err);
    if (!o)
        return rc;
    /* str and bin share a layout in msgpack-c but read each through its own
     * member. */
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *len = o->via.str.size;
    } else {
        *p = o->via.bin.ptr;
        *len = o->via.bin.size;
    }
    return 0;
}

int rpc_arg_uint(const rpc_msg_t *m, size_t i, uint64_t *out, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_POSITIVE_INTEGER, MSGPACK_OBJECT_POSITIVE_INTEGER,
                      "an unsigned integer", &rc, err);
    if (!o)
        return rc;
    *out = o->via.u64;
    return 0;
}

int rpc_arg_int(const rpc_msg_t *m, size_t i, int64_t *out, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_POSITIVE_INTEGER, MSGPACK_OBJECT_NEGATIVE_INTEGER,
                      "an integer", &rc, err);
    if (!o)
        return rc;
    if (o->type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        if (o->via.u64 > INT64_MAX)
            return err_set(err, -EINVAL,
                           "argument %zu is %" PRIu64 ", too large for a signed integer", i,
                           o->via.u64);
        *out = (int64_t)o->via.u64;
    } else {
        *out = o->via.i64;
    }
    return 0;
}

int rpc_arg_bool(const rpc_msg_t *m, size_t i, bool *out, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_BOOLEAN, MSGPACK_OBJECT_BOOLEAN, "a boolean", &rc, err);
    if (!o)
        return rc;
    *out = o->via.boolean;
    return 0;
}

int rpc_arg_array(const rpc_msg_t *m, size_t i, const msgpack_object_array **out, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_ARRAY, MSGPACK_OBJECT_ARRAY, "an array", &rc, err);
    if (!o)
        return rc;
    *out = &o->via.array;
    return 0;
}

int rpc_arg_map(const rpc_msg_t *m, size_t i, const msgpack_object_map **out, err_t *err)
{
    int rc;
    const msgpack_object *o =
        rpc_arg_typed(m, i, MSGPACK_OBJECT_MAP, MSGPACK_OBJECT_MAP, "a map", &rc, err);
    if (!o)
        return rc;
    *out = &o->via.map;
    return 0;
}

int rpc_msg_header_at(const rpc_msg_t *m, size_t i, rpc_header_t *h)
{
    if (i >= m->nheaders)
        return -ENOENT;
    const msgpack_object *pair = m->headers[i].via.array.ptr;
    h->name = pair[0].via.str.ptr;
    h->name_len = pair[0].via.str.size;
    if (pair[1].type == MSGPACK_OBJECT_STR) {
        h->value = pair[1].via.str.ptr;
        h->value_len = pair[1].via.str.size;
    } else {
        h->value = pair[1].via.bin.ptr;
        h->value_len = pair[1].via.bin.size;
    }
    return 0;
}

int rpc_msg_header(const rpc_msg_t *m, const char *name, const char **value, size_t *len)
{
    size_t nl = strlen(name);
    rpc_header_t h;
    for (size_t i = 0; rpc_msg_header_at(m, i, &h) == 0; i++) {
        if (h.name_len == nl && memcmp(h.name, name, nl) == 0) {
            *value = h.value;
            *len = h.value_len;
            return 0;
        }
    }
    return -ENOENT;
}

/* ---- channel ids -------------------------------------------------------- */

void rpc_channels_init(rpc_channels_t *c, uint64_t last)
{
    c->last = last;
}

uint64_t rpc_channels_next(rpc_channels_t *c)
{
    return ++c->last;
}

int rpc_channels_open(rpc_channels_t *c, uint64_t id, err_t *err)
{
    if (id < c->last)
        return err_set(err, -EPROTO, "channel %" PRIu64 " goes backwards (last %" PRIu64 ")", id,
                       c->last);
    if (id == c->last)
        return err_set(err, -EPROTO, "channel %" PRIu64 " reused (last %" PRIu64 ")", id, c->last);
    c->last = id;
    return 0;
}

void rpc_pack_json(msgpack_packer *pk, const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: {
        msgpack_pack_map(pk, (uint32_t)json_object_size(v));
        const char *k;
        json_t *x;
        json_object_foreach((json_t *)v, k, x)
        {
            msgpack_pack_str_with_body(pk, k, strlen(k));
            rpc_pack_json(pk, x);
        }
        break;
    }
    case JSON_ARRAY: {
        msgpack_pack_array(pk, (uint32_t)json_array_size(v));
        size_t i;
        json_t *x;
        json_array_foreach(v, i, x) rpc_pack_json(pk, x);
        break;
    }
    case JSON_STRING:
        msgpack_pack_str_with_body(pk, json_string_value(v), json_string_length(v));
        break;
    case JSON_INTEGER: msgpack_pack_int64(pk, json_integer_value(v)); break;
    case JSON_REAL: msgpack_pack_double(pk, json_real_value(v)); break;
    case JSON_TRUE: msgpack_pack_true(pk); break;
    case JSON_FALSE: msgpack_pack_false(pk); break;
    case JSON_NULL: msgpack_pack_nil(pk); break;
    }
}
