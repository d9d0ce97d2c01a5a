/* Fuzz the worker SDK's HTTP-over-invocation decoders (lib/worker/http.c).
 * The input is one request chunk: it must decode or be refused, never read
 * out of bounds; a decoded request is encoded again and must decode to the
 * same fields. The same bytes are fed to the response head decoder. */
#include <drover/worker.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_sdk_http: %s\n", what);
        abort();
    }
}

static void same_request(const drover_http_request_t *a, const drover_http_request_t *b)
{
    check(strcmp(a->method, b->method) == 0, "method differs");
    check(strcmp(a->uri, b->uri) == 0, "uri differs");
    check(strcmp(a->path, b->path) == 0, "path differs");
    /* a '?' after a NUL in the uri is lost by encode (C strings) */
    if (strchr(a->uri, '?'))
        check(strcmp(a->query, b->query) == 0, "query differs");
    check(strcmp(a->version, b->version) == 0, "version differs");
    check(a->nheaders == b->nheaders, "header count differs");
    for (size_t i = 0; i < a->nheaders; i++) {
        check(a->headers[i].name_len == b->headers[i].name_len, "header name differs");
        check(memcmp(a->headers[i].name, b->headers[i].name, a->headers[i].name_len) == 0,
              "header name differs");
        check(a->headers[i].value_len == b->headers[i].value_len, "header value differs");
        check(memcmp(a->headers[i].value, b->headers[i].value, a->headers[i].value_len) == 0,
              "header value differs");
    }
    check(a->body_len == b->body_len, "body length differs");
    check(memcmp(a->body, b->body, a->body_len) == 0, "body differs");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    drover_http_request_t *r;
    char why[96];
    if (drover_http_decode_request(data, size, &r, why, sizeof(why)) == 0) {
        /* method, uri and version are C strings to encode: compared as
         * such (up to an embedded NUL) */
        char *out;
        size_t len;
        check(drover_http_encode_request(r, &out, &len) == 0, "encode failed");
        drover_http_request_t *r2;
        check(drover_http_decode_request(out, len, &r2, why, sizeof(why)) == 0, "re-decode failed");
        same_request(r, r2);
        drover_http_request_free(r2);
        free(out);
        drover_http_request_free(r);
    }
    unsigned code;
    drover_http_header_t *hs;
    size_t n;
    if (drover_http_decode_head(data, size, &code, &hs, &n) == 0) {
        char *out;
        size_t len;
        if (drover_http_encode_head(code, hs, n, &out, &len) == 0) {
            unsigned code2;
            drover_http_header_t *hs2;
            size_t n2;
            check(drover_http_decode_head(out, len, &code2, &hs2, &n2) == 0, "head re-decode");
            check(code2 == code && n2 == n, "head differs");
            free(hs2);
            free(out);
        }
        free(hs);
    }
    return 0;
}
