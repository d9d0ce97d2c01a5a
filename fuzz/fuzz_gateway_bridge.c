/* Fuzz the worker bridge's response head mapping: a worker's head chunk
 * (msgpack [code, [[name, value]...]]) turned into the HTTP response head
 * the client gets. Input: byte 0 picks the client side (HTTP/1.0 or 1.1,
 * HEAD, keep-alive, draining, HTTPS with HSTS, route headers), the rest is
 * the chunk. Checked on every accepted head: it is one well-formed HTTP/1.1
 * response head (http-parser reads it through the end of the headers with
 * no error and no byte left over), with no bare CR or LF, and its framing
 * agrees with what the bridge will do with the body; on refusal the output
 * buffer is untouched. */
#include "core/buf.h"
#include "core/err.h"
#include "gateway/bridge.h"

#include <errno.h>
#include <http_parser.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static void check(int cond, const char *what)
{
    if (!cond) {
        fprintf(stderr, "fuzz_gateway_bridge: %s\n", what);
        abort();
    }
}

typedef struct seen {
    int te, cl, conn;
    bool done;
} seen_t;

static int on_field(http_parser *p, const char *at, size_t n)
{
    seen_t *s = p->data;
    if (n == 17 && strncasecmp(at, "transfer-encoding", 17) == 0)
        s->te++;
    if (n == 14 && strncasecmp(at, "content-length", 14) == 0)
        s->cl++;
    if (n == 10 && strncasecmp(at, "connection", 10) == 0)
        s->conn++;
    return 0;
}

static int on_headers_complete(http_parser *p)
{
    ((seen_t *)p->data)->done = true;
    return 1; /* stop: a body is not ours to check */
}

static const http_parser_settings settings = {
    .on_header_field = on_field,
    .on_headers_complete = on_headers_complete,
};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    uint8_t sel = data[0];
    static const char *const add[] = {"X-Frame-Options: DENY",
                                      "Strict-Transport-Security: max-age=5", "Content-Length: 3"};
    gw_bridge_head_opts_t o = {
        .http_minor = sel & 1,
        .is_head = (sel & 2) != 0,
        .keep_alive = (sel & 4) != 0,
        .draining = (sel & 8) != 0,
        .hsts = (sel & 16) ? "Strict-Transport-Security: max-age=9" : NULL,
        .add_headers = (sel & 32) ? add : NULL,
        .n_add_headers = (sel & 32) ? 3 : 0,
    };
    buf_t out = BUF_INIT(1 << 20);
    (void)buf_append(&out, "x", 1); /* something before: must survive a refusal */
    gw_bridge_head_t h;
    err_t err = {0};
    int rc = gw_bridge_head_build(data + 1, size - 1, &o, &out, &h, &err);
    if (rc < 0) {
        check(rc == -EPROTO, "error other than -EPROTO");
        check(out.len == 1 && out.data[0] == 'x' && out.data[1] == '\0', "output changed on error");
        check(err.msg[0] != '\0', "error without a message");
        buf_free(&out);
        return 0;
    }
    check(rc == 0, "unexpected result");
    check(h.status >= 200 && h.status <= 599, "status out of range");
    check(!(h.chunked && h.has_length), "chunked with a length");
    check(!(h.chunked && h.nobody), "chunked without a body");
    check(!h.chunked || o.http_minor == 1, "chunked to HTTP/1.0");
    check(h.nobody || h.chunked || h.has_length || h.close, "body with no end");
    const char *head = out.data + 1;
    size_t hl = out.len - 1;
    check(hl >= 4 && memcmp(head + hl - 4, "\r\n\r\n", 4) == 0, "head does not end in CRLFCRLF");
    for (size_t i = 0; i < hl; i++) {
        if (head[i] == '\r')
            check(i + 1 < hl && head[i + 1] == '\n', "bare CR");
        if (head[i] == '\n')
            check(i > 0 && head[i - 1] == '\r', "bare LF");
        check(head[i] != '\0', "NUL in head");
    }
    http_parser p;
    seen_t s = {0};
    http_parser_init(&p, HTTP_RESPONSE);
    p.data = &s;
    size_t got = http_parser_execute(&p, &settings, head, hl);
    check(s.done, "http-parser did not reach the end of the head");
    check(got == hl, "bytes after the head");
    check((int)p.status_code == h.status, "status differs");
    check(s.te == (h.chunked ? 1 : 0), "Transfer-Encoding does not match the framing");
    check(s.cl == (h.has_length && h.status != 204 ? 1 : 0), "Content-Length count");
    check(s.conn <= 1, "more than one Connection header");
    buf_free(&out);
    return 0;
}
