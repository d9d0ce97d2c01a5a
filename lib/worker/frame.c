/* frame: bounded msgpack-RPC framing for the worker SDK (see frame.h). */
#include "frame.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void *dw_malloc(size_t n)
{
    void *p = malloc(n ? n : 1);
    if (!p)
        abort();
    return p;
}

void *dw_realloc(void *p, size_t n)
{
    void *q = realloc(p, n ? n : 1);
    if (!q)
        abort();
    return q;
}

char *dw_strndup(const char *s, size_t n)
{
    char *p = dw_malloc(n + 1);
    memcpy(p, s, n);
    p[n] = '\0';
    return p;
}

void dw_buf_append(dw_buf_t *b, const void *p, size_t n)
{
    if (n == 0)
        return;
    /* Reclaim the sent prefix before growing: the queue is mostly drained
     * as fast as it fills, so this keeps it small. */
    if (b->off > 0 && b->len + n > b->cap) {
        memmove(b->data, b->data + b->off, b->len - b->off);
        b->len -= b->off;
        b->off = 0;
    }
    if (b->len + n > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->len + n)
            cap *= 2;
        b->data = dw_realloc(b->data, cap);
        b->cap = cap;
    }
    memcpy(b->data + b->len, p, n);
    b->len += n;
}

void dw_buf_consume(dw_buf_t *b, size_t n)
{
    b->off += n;
    if (b->off >= b->len) {
        b->off = b->len = 0;
        /* Drop a big buffer once empty so one large response does not pin
         * its memory for the life of the worker. */
        if (b->cap > (1u << 20)) {
            free(b->data);
            b->data = NULL;
            b->cap = 0;
        }
    }
}

void dw_buf_free(dw_buf_t *b)
{
    free(b->data);
    memset(b, 0, sizeof(*b));
}

int dw_buf_pack_write(void *data, const char *buf, size_t len)
{
    dw_buf_append(data, buf, len);
    return 0;
}

void dw_scan_reset(dw_scan_t *s)
{
    s->pos = 0;
    s->depth = 0;
}

static uint64_t be(const unsigned char *p, unsigned n)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v = (v << 8) | p[i];
    return v;
}

/* Why: msgpack-c would trust the announced sizes; this walks only the
 * headers, so the memory a message can claim is bounded by max before any
 * of it is allocated. The buffer holds the message from its first byte, so
 * a header cut by the end of the buffer is simply read again later. */
int dw_scan_next(dw_scan_t *s, const unsigned char *buf, size_t len, size_t max, size_t *msg_len)
{
    if (s->depth == 0 && s->pos == 0) {
        s->left[0] = 1;
        s->depth = 1;
    }
    while (s->depth > 0) {
        if (s->left[s->depth - 1] == 0) {
            s->depth--;
            continue;
        }
        if (s->pos >= len)
            return s->pos >= max ? -EMSGSIZE : 0;
        unsigned char b = buf[s->pos];
        uint64_t hdr = 1, payload = 0, children = 0;
        unsigned lenbytes = 0; /* size field following the type byte */
        if (b <= 0x7f || b >= 0xe0 || b == 0xc0 || b == 0xc2 || b == 0xc3) {
            /* fixint, nil, bool */
        } else if (b >= 0x80 && b <= 0x8f) {
            children = 2u * (b & 0x0f);
        } else if (b >= 0x90 && b <= 0x9f) {
            children = b & 0x0f;
        } else if (b >= 0xa0 && b <= 0xbf) {
            payload = b & 0x1f;
        } else {
            switch (b) {
            case 0xc4:
            case 0xd9: lenbytes = 1; break; /* bin8, str8 */
            case 0xc5:
            case 0xda: lenbytes = 2; break; /* bin16, str16 */
            case 0xc6:
            case 0xdb: lenbytes = 4; break; /* bin32, str32 */
            case 0xc7:
                lenbytes = 1;
                hdr = 3;
                break; /* ext8: len, type */
            case 0xc8:
                lenbytes = 2;
                hdr = 4;
                break;
            case 0xc9:
                lenbytes = 4;
                hdr = 6;
                break;
            case 0xca: payload = 4; break; /* float32 */
            case 0xcb: payload = 8; break; /* float64 */
            case 0xcc:
            case 0xd0: payload = 1; break;
            case 0xcd:
            case 0xd1: payload = 2; break;
            case 0xce:
            case 0xd2: payload = 4; break;
            case 0xcf:
            case 0xd3: payload = 8; break;
            case 0xd4:
                hdr = 2;
                payload = 1;
                break; /* fixext: type + data */
            case 0xd5:
                hdr = 2;
                payload = 2;
                break;
            case 0xd6:
                hdr = 2;
                payload = 4;
                break;
            case 0xd7:
                hdr = 2;
                payload = 8;
                break;
            case 0xd8:
                hdr = 2;
                payload = 16;
                break;
            case 0xdc:
            case 0xde: lenbytes = 2; break; /* array16, map16 */
            case 0xdd:
            case 0xdf: lenbytes = 4; break; /* array32, map32 */
            default: return -EPROTO;        /* 0xc1 */
            }
            if (hdr == 1)
                hdr = 1 + lenbytes;
        }
        if (s->pos + hdr > max)
            return -EMSGSIZE;
        if (s->pos + hdr > len)
            return 0;
        if (lenbytes) {
            uint64_t n = be(buf + s->pos + 1, lenbytes);
            if (b == 0xdc || b == 0xdd)
                children = n;
            else if (b == 0xde || b == 0xdf)
                children = 2 * n;
            else
                payload = n;
        }
        /* every child takes at least one byte */
        if ((uint64_t)s->pos + hdr + payload + children > max)
            return -EMSGSIZE;
        s->left[s->depth - 1]--;
        s->pos += hdr + payload;
        if (children > 0) {
            if (s->depth > DW_MAX_DEPTH - 1)
                return -EPROTO;
            s->left[s->depth++] = children;
        }
    }
    if (s->pos > len)
        return 0; /* the last payload has not fully arrived */
    *msg_len = s->pos;
    return 1;
}

bool dw_obj_bytes(const msgpack_object *o, const char **p, size_t *len)
{
    if (o->type == MSGPACK_OBJECT_STR) {
        *p = o->via.str.ptr;
        *len = o->via.str.size;
        return true;
    }
    if (o->type == MSGPACK_OBJECT_BIN) {
        *p = o->via.bin.ptr;
        *len = o->via.bin.size;
        return true;
    }
    return false;
}

int dw_msg_parse(msgpack_unpacked *res, const unsigned char *buf, size_t len, dw_msg_t *m,
                 char *why, size_t whylen)
{
    size_t off = 0;
    msgpack_unpack_return ur = msgpack_unpack_next(res, (const char *)buf, len, &off);
    if (ur != MSGPACK_UNPACK_SUCCESS || off != len) {
        snprintf(why, whylen, "not msgpack");
        return -EPROTO;
    }
    const msgpack_object *o = &res->data;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size < 3 || o->via.array.size > 4) {
        snprintf(why, whylen, "message is not an array of 3 or 4 elements");
        return -EPROTO;
    }
    const msgpack_object *e = o->via.array.ptr;
    if (e[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER || e[0].via.u64 == 0) {
        snprintf(why, whylen, "channel is not a positive integer");
        return -EPROTO;
    }
    if (e[1].type != MSGPACK_OBJECT_POSITIVE_INTEGER) {
        snprintf(why, whylen, "type is not an unsigned integer");
        return -EPROTO;
    }
    if (e[2].type != MSGPACK_OBJECT_ARRAY) {
        snprintf(why, whylen, "args is not an array");
        return -EPROTO;
    }
    m->channel = e[0].via.u64;
    m->type = e[1].via.u64;
    m->args = e[2].via.array.size ? e[2].via.array.ptr : NULL;
    m->nargs = e[2].via.array.size;
    m->headers = NULL;
    m->nheaders = 0;
    if (o->via.array.size == 4) {
        if (e[3].type != MSGPACK_OBJECT_ARRAY) {
            snprintf(why, whylen, "headers is not an array");
            return -EPROTO;
        }
        for (size_t i = 0; i < e[3].via.array.size; i++) {
            const msgpack_object *h = &e[3].via.array.ptr[i];
            const char *p;
            size_t n;
            if (h->type != MSGPACK_OBJECT_ARRAY || h->via.array.size != 2 ||
                h->via.array.ptr[0].type != MSGPACK_OBJECT_STR ||
                !dw_obj_bytes(&h->via.array.ptr[1], &p, &n)) {
                snprintf(why, whylen, "header %zu is not [str, str|bin]", i);
                return -EPROTO;
            }
        }
        m->headers = e[3].via.array.size ? e[3].via.array.ptr : NULL;
        m->nheaders = e[3].via.array.size;
    }
    return 0;
}
