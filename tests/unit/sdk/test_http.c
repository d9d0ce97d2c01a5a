/* Tests for the SDK's HTTP helper (lib/worker/http.c): request and head
 * encode/decode round trips, malformed chunks, and a whole HTTP invocation
 * through drover_worker_on_http. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "sdk/agent.h"

#include <stdio.h>

static void test_request_round_trip(void **state)
{
    drover_http_header_t hs[] = {{"Host", 4, "a.local", 7}, {"x-bin", 5, "a\0b", 3}};
    drover_http_request_t in = {.method = "POST",
                                .uri = "/p/q?size=3&x=y",
                                .version = "1.1",
                                .headers = hs,
                                .nheaders = 2,
                                .body = "bo\0dy",
                                .body_len = 5};
    char *chunk;
    size_t len;
    assert_int_equal(drover_http_encode_request(&in, &chunk, &len), 0);
    drover_http_request_t *r;
    char why[96];
    assert_int_equal(drover_http_decode_request(chunk, len, &r, why, sizeof(why)), 0);
    assert_string_equal(r->method, "POST");
    assert_string_equal(r->uri, "/p/q?size=3&x=y");
    assert_string_equal(r->path, "/p/q");
    assert_string_equal(r->query, "size=3&x=y");
    assert_string_equal(r->version, "1.1");
    assert_int_equal(r->nheaders, 2);
    assert_string_equal(r->headers[0].name, "Host");
    assert_int_equal(r->headers[1].value_len, 3);
    assert_memory_equal(r->headers[1].value, "a\0b", 3);
    assert_int_equal(r->body_len, 5);
    assert_memory_equal(r->body, "bo\0dy", 5);
    assert_string_equal(drover_http_request_header(r, "HOST"), "a.local");
    assert_null(drover_http_request_header(r, "missing"));
    drover_http_request_free(r);
    /* every truncation of a valid chunk is refused, never read past */
    for (size_t cut = 0; cut < len; cut++) {
        char *part = malloc(cut ? cut : 1);
        memcpy(part, chunk, cut);
        assert_int_equal(drover_http_decode_request(part, cut, &r, NULL, 0), -EPROTO);
        free(part);
    }
    free(chunk);
}

static void test_request_no_query_no_body(void **state)
{
    /* ["GET", "/", "1.0", [], nil] with str where bin is usual */
    const char chunk[] = "\x95\xa3GET\xa1/\xa3"
                         "1.0\x90\xc0";
    drover_http_request_t *r;
    assert_int_equal(drover_http_decode_request(chunk, sizeof(chunk) - 1, &r, NULL, 0), 0);
    assert_string_equal(r->path, "/");
    assert_string_equal(r->query, "");
    assert_int_equal(r->nheaders, 0);
    assert_null(r->headers);
    assert_int_equal(r->body_len, 0);
    assert_string_equal(r->body, "");
    drover_http_request_free(r);
}

static void assert_bad(const char *chunk, size_t len, int rc, const char *why)
{
    drover_http_request_t *r = NULL;
    char buf[96] = "";
    assert_int_equal(drover_http_decode_request(chunk, len, &r, buf, sizeof(buf)), rc);
    assert_null(r);
    assert_string_equal(buf, why);
}

#define BAD(lit, rc, why) assert_bad(lit, sizeof(lit) - 1, rc, why)

static void test_request_malformed(void **state)
{
    BAD("\x94\xa3GET\xa1/\xa1"
        "1\x90",
        -EINVAL, "request is not [method, uri, version, headers, body]");
    BAD("\x95\x01\xa1/\xa1"
        "1\x90\xc0",
        -EINVAL, "method is not a string");
    BAD("\x95\xa1G\xa1/\xa1"
        "1\x80\xc0",
        -EINVAL, "headers is not an array");
    BAD("\x95\xa1G\xa1/\xa1"
        "1\x91\x91\xa1h\xc0",
        -EINVAL, "a header is not [name, value]");
    BAD("\x95\xa1G\xa1/\xa1"
        "1\x90\x05",
        -EINVAL, "body is not bytes");
    /* trailing bytes, not msgpack, huge claims */
    BAD("\x95\xa1G\xa1/\xa1"
        "1\x90\xc0\x00",
        -EPROTO, "not one msgpack value");
    BAD("\xc1", -EPROTO, "not one msgpack value");
    BAD("\xdd\xff\xff\xff\xff", -EPROTO, "not one msgpack value");
    BAD("", -EPROTO, "not one msgpack value");
}

static void test_head_round_trip(void **state)
{
    drover_http_header_t hs[] = {{"content-type", 12, "text/plain", 10}, {"x", 1, "", 0}};
    char *chunk;
    size_t len;
    assert_int_equal(drover_http_encode_head(404, hs, 2, &chunk, &len), 0);
    unsigned code;
    drover_http_header_t *out;
    size_t n;
    assert_int_equal(drover_http_decode_head(chunk, len, &code, &out, &n), 0);
    assert_int_equal(code, 404);
    assert_int_equal(n, 2);
    assert_string_equal(out[0].name, "content-type");
    assert_string_equal(out[0].value, "text/plain");
    assert_int_equal(out[1].value_len, 0);
    free(out);
    free(chunk);
    assert_int_equal(drover_http_encode_head(99, NULL, 0, &chunk, &len), -EINVAL);
    assert_int_equal(drover_http_encode_head(1000, NULL, 0, &chunk, &len), -EINVAL);
    assert_int_equal(drover_http_decode_head("\x92\xcd\x03\xe8\x90", 5, &code, &out, &n), -EINVAL);
    assert_int_equal(drover_http_decode_head("\x92\xcc\xc8\x91\x01", 5, &code, &out, &n), -EINVAL);
}

/* ---- a whole HTTP invocation through the worker ---- */

static void serve(drover_call_t *call, const drover_http_request_t *req, void *data)
{
    (*(int *)data)++;
    char body[256];
    int n = snprintf(body, sizeof(body), "%s %s [%s] %zu", req->method, req->path, req->query,
                     req->body_len);
    if (strcmp(req->path, "/big") == 0) {
        drover_http_header_t h[] = {{"x-kind", 6, "big", 3}};
        assert_int_equal(drover_http_write_head(call, 201, h, 1), 0);
        char *big = calloc(1, DROVER_CHUNK_MAX + 10);
        assert_int_equal(drover_call_write(call, big, DROVER_CHUNK_MAX + 10), 0);
        free(big);
        assert_int_equal(drover_call_close(call), 0);
        return;
    }
    drover_http_header_t h[] = {{"content-type", 12, "text/plain", 10}};
    assert_int_equal(drover_http_respond(call, 200, h, 1, body, (size_t)n), 0);
}

static void send_request(agent_t *a, uint64_t ch, const char *method, const char *uri,
                         const char *body)
{
    drover_http_request_t in = {
        .method = method, .uri = uri, .version = "1.1", .body = body, .body_len = strlen(body)};
    char *chunk;
    size_t len;
    assert_int_equal(drover_http_encode_request(&in, &chunk, &len), 0);
    agent_invoke(a, ch, "http");
    /* split in two writes: the SDK joins the request's chunks */
    agent_send_bin(a, ch, chunk, len / 2);
    agent_send_bin(a, ch, chunk + len / 2, len - len / 2);
    agent_close(a, ch);
    free(chunk);
}

static void expect_head(agent_t *a, uint64_t ch, unsigned want)
{
    const msgpack_object_array *args = agent_expect(a, ch, 0);
    unsigned code;
    drover_http_header_t *hs;
    size_t n;
    assert_int_equal(drover_http_decode_head(args->ptr[0].via.bin.ptr, args->ptr[0].via.bin.size,
                                             &code, &hs, &n),
                     0);
    assert_int_equal(code, want);
    assert_int_equal(n, 1);
    free(hs);
}

static void test_http_invocation(void **state)
{
    int served = 0;
    agent_t a;
    drover_worker_t *w = drover_worker_new();
    assert_int_equal(drover_worker_on_http(w, "http", serve, &served), 0);
    agent_init(&a, w);
    agent_expect(&a, 1, 0); /* handshake */
    send_request(&a, 2, "PUT", "/x/y?a=1", "hello");
    expect_head(&a, 2, 200);
    agent_expect_chunk(&a, 2, "PUT /x/y [a=1] 5", 16);
    agent_expect(&a, 2, 2);
    send_request(&a, 3, "GET", "/big", "");
    expect_head(&a, 3, 201);
    const msgpack_object_array *args = agent_expect(&a, 3, 0);
    assert_int_equal(args->ptr[0].via.bin.size, DROVER_CHUNK_MAX);
    args = agent_expect(&a, 3, 0);
    assert_int_equal(args->ptr[0].via.bin.size, 10);
    agent_expect(&a, 3, 2);
    /* a chunk that is no HTTP request */
    agent_invoke(&a, 4, "http");
    agent_send_bin(&a, 4, "\x01", 1);
    agent_close(&a, 4);
    agent_expect_error(&a, 4, 1, 22,
                       "bad HTTP request chunk: request is not [method, uri, "
                       "version, headers, body]");
    assert_int_equal(served, 2);
    assert_int_equal(a.last_step, 1);
    agent_free(&a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_request_round_trip), cmocka_unit_test(test_request_no_query_no_body),
        cmocka_unit_test(test_request_malformed),  cmocka_unit_test(test_head_round_trip),
        cmocka_unit_test(test_http_invocation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
