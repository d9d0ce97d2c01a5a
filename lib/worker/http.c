/* http: HTTP over invocation (docs/protocol.md, section 6) for the worker
 * SDK: decode the request chunk, encode the response head. */
#include "internal.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define HTTP_CODE_MAX 999

static int fail(char *errbuf, size_t errlen, int rc, const char *what)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s", what);
    return rc;
}

/* Unpacks exactly one msgpack value filling the chunk. Why the scan first:
 * msgpack-c sizes arrays from their headers, and the chunk comes from the
 * network; the scan bounds every count by the chunk's length. */
static int unpack_one(msgpack_unpacked *res, const void *chunk, size_t len)
{
    dw_scan_t s;
    size_t mlen;
    dw_scan_reset(&s);
    if (len == 0 || dw_scan_next(&s, chunk, len, len, &mlen) != 1 || mlen != len)
        return -EPROTO;
    size_t off = 0;
    if (msgpack_unpack_next(res, chunk, len, &off) != MSGPACK_UNPACK_SUCCESS || off != len)
        return -EPROTO;
    return 0;
}

/* A str, a bin, or nil (as empty). */
static bool bytes_or_nil(const msgpack_object *o, const char **p, size_t *n)
{
    if (o->type == MSGPACK_OBJECT_NIL) {
        *p = "";
        *n = 0;
        return true;
    }
    return dw_obj_bytes(o, p, n);
}

static char *put(char **s, const char *p, size_t n)
{
    char *start = *s;
    if (n)
        memcpy(start, p, n);
    start[n] = '\0';
    *s += n + 1;
    return start;
}

int drover_http_decode_request(const void *chunk, size_t len, drover_http_request_t **out,
                               char *errbuf, size_t errlen)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = unpack_one(&res, chunk, len);
    if (rc < 0) {
        msgpack_unpacked_destroy(&res);
        return fail(errbuf, errlen, rc, "not one msgpack value");
    }
    const msgpack_object *o = &res.data;
    const char *f[3] = {0}, *body = "", *why = NULL;
    size_t fl[3] = {0}, body_len = 0;
    const msgpack_object_array *hs = NULL;
    if (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 5) {
        why = "request is not [method, uri, version, headers, body]";
    } else {
        const msgpack_object *e = o->via.array.ptr;
        for (int i = 0; i < 3 && !why; i++)
            if (!dw_obj_bytes(&e[i], &f[i], &fl[i]))
                why = i == 0   ? "method is not a string"
                      : i == 1 ? "uri is not a string"
                               : "version is not a string";
        if (!why && e[3].type != MSGPACK_OBJECT_ARRAY)
            why = "headers is not an array";
        if (!why && !bytes_or_nil(&e[4], &body, &body_len))
            why = "body is not bytes";
        if (!why)
            hs = &e[3].via.array;
    }
    size_t bytes = sizeof(drover_http_request_t);
    if (!why) {
        bytes += hs->size * sizeof(drover_http_header_t);
        for (size_t i = 0; i < hs->size && !why; i++) {
            const msgpack_object *h = &hs->ptr[i];
            const char *p;
            size_t n, m;
            if (h->type != MSGPACK_OBJECT_ARRAY || h->via.array.size != 2 ||
                !dw_obj_bytes(&h->via.array.ptr[0], &p, &n) ||
                !dw_obj_bytes(&h->via.array.ptr[1], &p, &m))
                why = "a header is not [name, value]";
            else
                bytes += n + m + 2;
        }
        /* method, uri, path, query, version, body: each + NUL */
        bytes += fl[0] + 2 * fl[1] + fl[2] + body_len + 6;
    }
    if (why) {
        msgpack_unpacked_destroy(&res);
        return fail(errbuf, errlen, -EINVAL, why);
    }
    drover_http_request_t *r = dw_malloc(bytes);
    drover_http_header_t *hv = (drover_http_header_t *)(r + 1);
    char *s = (char *)(hv + hs->size);
    r->method = put(&s, f[0], fl[0]);
    r->uri = put(&s, f[1], fl[1]);
    const char *q = memchr(f[1], '?', fl[1]);
    size_t plen = q ? (size_t)(q - f[1]) : fl[1];
    r->path = put(&s, f[1], plen);
    r->query = q ? put(&s, q + 1, fl[1] - plen - 1) : put(&s, "", 0);
    r->version = put(&s, f[2], fl[2]);
    for (size_t i = 0; i < hs->size; i++) {
        const msgpack_object *kv = hs->ptr[i].via.array.ptr;
        const char *p;
        size_t n;
        dw_obj_bytes(&kv[0], &p, &n);
        hv[i].name = put(&s, p, n);
        hv[i].name_len = n;
        dw_obj_bytes(&kv[1], &p, &n);
        hv[i].value = put(&s, p, n);
        hv[i].value_len = n;
    }
    r->headers = hs->size ? hv : NULL;
    r->nheaders = hs->size;
    r->body = put(&s, body, body_len);
    r->body_len = body_len;
    msgpack_unpacked_destroy(&res);
    *out = r;
    return 0;
}

void drover_http_request_free(drover_http_request_t *req)
{
    free(req);
}

const char *drover_http_request_header(const drover_http_request_t *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nheaders; i++)
        if (req->headers[i].name_len == n && strncasecmp(req->headers[i].name, name, n) == 0)
            return req->headers[i].value;
    return NULL;
}

static void pack_bytes_str(msgpack_packer *pk, const char *p, size_t n)
{
    msgpack_pack_str_with_body(pk, p ? p : "", p ? n : 0);
}

static void pack_headers(msgpack_packer *pk, const drover_http_header_t *h, size_t n)
{
    msgpack_pack_array(pk, n);
    for (size_t i = 0; i < n; i++) {
        msgpack_pack_array(pk, 2);
        pack_bytes_str(pk, h[i].name, h[i].name_len);
        pack_bytes_str(pk, h[i].value, h[i].value_len);
    }
}

/* Hands the packed bytes to the caller as a plain malloc'ed block. */
static void take(dw_buf_t *b, char **out, size_t *len)
{
    *len = dw_buf_pending(b);
    *out = dw_malloc(*len);
    memcpy(*out, b->data + b->off, *len);
    dw_buf_free(b);
}

int drover_http_encode_request(const drover_http_request_t *r, char **out, size_t *len)
{
    if (!r->method || !r->uri || (r->nheaders && !r->headers) || (r->body_len && !r->body))
        return -EINVAL;
    dw_buf_t b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, dw_buf_pack_write);
    msgpack_pack_array(&pk, 5);
    pack_bytes_str(&pk, r->method, strlen(r->method));
    pack_bytes_str(&pk, r->uri, strlen(r->uri));
    const char *v = r->version ? r->version : "1.1";
    pack_bytes_str(&pk, v, strlen(v));
    pack_headers(&pk, r->headers, r->nheaders);
    msgpack_pack_bin_with_body(&pk, r->body_len ? r->body : "", r->body_len);
    take(&b, out, len);
    return 0;
}

int drover_http_encode_head(unsigned code, const drover_http_header_t *headers, size_t n,
                            char **out, size_t *len)
{
    if (code < 100 || code > HTTP_CODE_MAX || (n && !headers))
        return -EINVAL;
    dw_buf_t b = {0};
    msgpack_packer pk;
    msgpack_packer_init(&pk, &b, dw_buf_pack_write);
    msgpack_pack_array(&pk, 2);
    msgpack_pack_unsigned_int(&pk, code);
    pack_headers(&pk, headers, n);
    take(&b, out, len);
    return 0;
}

int drover_http_decode_head(const void *chunk, size_t len, unsigned *code,
                            drover_http_header_t **headers, size_t *n)
{
    msgpack_unpacked res;
    msgpack_unpacked_init(&res);
    int rc = unpack_one(&res, chunk, len);
    const msgpack_object *o = &res.data;
    if (rc == 0 && (o->type != MSGPACK_OBJECT_ARRAY || o->via.array.size != 2 ||
                    o->via.array.ptr[0].type != MSGPACK_OBJECT_POSITIVE_INTEGER ||
                    o->via.array.ptr[0].via.u64 > HTTP_CODE_MAX ||
                    o->via.array.ptr[1].type != MSGPACK_OBJECT_ARRAY))
        rc = -EINVAL;
    size_t bytes = 0;
    const msgpack_object_array *hs = rc == 0 ? &o->via.array.ptr[1].via.array : NULL;
    for (size_t i = 0; rc == 0 && i < hs->size; i++) {
        const msgpack_object *h = &hs->ptr[i];
        const char *p;
        size_t a, b;
        if (h->type != MSGPACK_OBJECT_ARRAY || h->via.array.size != 2 ||
            !dw_obj_bytes(&h->via.array.ptr[0], &p, &a) ||
            !dw_obj_bytes(&h->via.array.ptr[1], &p, &b))
            rc = -EINVAL;
        else
            bytes += a + b + 2;
    }
    if (rc < 0) {
        msgpack_unpacked_destroy(&res);
        return rc;
    }
    drover_http_header_t *hv = dw_malloc(hs->size * sizeof(*hv) + bytes);
    char *s = (char *)(hv + hs->size);
    for (size_t i = 0; i < hs->size; i++) {
        const msgpack_object *kv = hs->ptr[i].via.array.ptr;
        const char *p;
        size_t k;
        dw_obj_bytes(&kv[0], &p, &k);
        hv[i].name = put(&s, p, k);
        hv[i].name_len = k;
        dw_obj_bytes(&kv[1], &p, &k);
        hv[i].value = put(&s, p, k);
        hv[i].value_len = k;
    }
    *code = (unsigned)o->via.array.ptr[0].via.u64;
    *headers = hv;
    *n = hs->size;
    msgpack_unpacked_destroy(&res);
    return 0;
}

int drover_http_write_head(drover_call_t *call, unsigned code, const drover_http_header_t *headers,
                           size_t n)
{
    char *head;
    size_t len;
    int rc = drover_http_encode_head(code, headers, n, &head, &len);
    if (rc < 0)
        return rc;
    if (len > DROVER_CHUNK_MAX)
        rc = -EMSGSIZE; /* a head must go in one chunk */
    else
        rc = drover_call_write(call, head, len);
    free(head);
    return rc;
}

int drover_http_respond(drover_call_t *call, unsigned code, const drover_http_header_t *headers,
                        size_t n, const void *body, size_t len)
{
    int rc = drover_http_write_head(call, code, headers, n);
    if (rc == 0)
        rc = drover_call_write(call, body, len);
    if (rc == 0)
        rc = drover_call_close(call);
    return rc;
}

/* Whole-body HTTP mode (worker.c calls it once the request closed). */
int dw_http_dispatch(drover_call_t *c, const char *body, size_t len)
{
    drover_http_request_t *req;
    char why[96];
    int rc = drover_http_decode_request(body, len, &req, why, sizeof(why));
    if (rc < 0)
        return drover_call_error(c, DROVER_ECAT_PROTOCOL, EINVAL, "bad HTTP request chunk: %s",
                                 why);
    c->h->http_fn(c, req, c->h->data);
    drover_http_request_free(req);
    return 0;
}
