/* Fuzz the proxy's client side: request heads (raw-byte checks, http-parser,
 * routing, the rewrite for the backend), request bodies (re-framing,
 * limits), and the relay of the backend's answer (response parsing,
 * interim responses, re-chunking, upgrades), all through a detached
 * connection, the same code sockets' bytes go through.
 *
 * Input: client bytes, optionally followed by "\n--BACKEND--\n" and the
 * bytes the backend answers with. The first byte picks the size of the
 * pieces the client bytes arrive in, so the head scanner and the parser
 * see every kind of split. */
#include "core/log.h"
#include "gateway/proxy.h"
#include "gateway/routes.h"

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static gw_proxy_t *proxy;

static void setup(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    gw_builder_t *b = gw_builder_new(NULL);
    gw_endpoint_in_t ep[2] = {{"127.0.0.1", 1}, {"127.0.0.2", 2}};
    gw_builder_pool(b, "/app", ep, 2);
    gw_builder_pool(b, "/small", ep, 1);
    static const char *const add[] = {"Strict-Transport-Security: max-age=1",
                                      "X-Frame-Options: DENY"};
    gw_route_in_t r1 = {.kind = GW_ROUTE_HTTP,
                        .app = "/app",
                        .host = "",
                        .path = "/",
                        .target = "/app",
                        .add_headers = add,
                        .n_add_headers = 2};
    gw_route_in_t r2 = {.kind = GW_ROUTE_HTTP,
                        .app = "/small",
                        .host = "s.test",
                        .path = "/",
                        .target = "/small",
                        .max_body = 64,
                        .sticky = GW_STICKY_COOKIE,
                        .sticky_name = "sid"};
    gw_route_in_t r3 = {.kind = GW_ROUTE_WORKER,
                        .app = "/w",
                        .host = "w.test",
                        .path = "/",
                        .target = "/app",
                        .event = "http"};
    gw_route_in_t r4 = {.kind = GW_ROUTE_HTTP,
                        .app = "/none",
                        .host = "n.test",
                        .path = "/x",
                        .target = "/nothing"};
    gw_builder_route(b, &r1, NULL);
    gw_builder_route(b, &r2, NULL);
    gw_builder_route(b, &r3, NULL);
    gw_builder_route(b, &r4, NULL);
    gw_snapshot_t *s = gw_builder_finish(b, 1);
    gw_proxy_opts_t o = {.max_header_bytes = 2048, .max_body_bytes = 4096};
    proxy = gw_proxy_new_detached(&o, s);
    gw_snapshot_unref(s);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!proxy)
        setup();
    static const char sep[] = "\n--BACKEND--\n";
    const uint8_t *be = NULL;
    size_t be_len = 0, cl_len = size;
    const uint8_t *m = size >= sizeof(sep) - 1 ? memmem(data, size, sep, sizeof(sep) - 1) : NULL;
    if (m) {
        cl_len = (size_t)(m - data);
        be = m + sizeof(sep) - 1;
        be_len = size - cl_len - (sizeof(sep) - 1);
    }
    gw_dconn_t *d = gw_dconn_new(proxy);
    size_t step = cl_len ? (size_t)data[0] % 97 + 1 : 1;
    int rc = 0;
    for (size_t off = 0; off < cl_len && rc == 0;) {
        size_t n = cl_len - off < step ? cl_len - off : step;
        rc = gw_dconn_feed(d, data + off, n);
        off += n;
    }
    if (be && rc == 0) {
        size_t bstep = be_len ? (size_t)be[0] % 61 + 1 : 1;
        for (size_t off = 0; off < be_len;) {
            size_t n = be_len - off < bstep ? be_len - off : bstep;
            if (gw_dconn_backend_feed(d, be + off, n) < 0)
                break;
            off += n;
        }
        if (size % 2)
            (void)gw_dconn_backend_feed(d, NULL, 0);
    }
    if (size % 3 == 0)
        (void)gw_dconn_feed(d, NULL, 0);
    /* the output must stay a sequence of responses we wrote: touch it */
    const buf_t *out = gw_dconn_output(d);
    if (getenv("GW_FUZZ_SHOW")) /* reproducing a find: show both sides */
        fprintf(stderr, "--- to backend:\n%.*s\n--- to client:\n%.*s\n---\n",
                (int)gw_dconn_backend_output(d)->len,
                gw_dconn_backend_output(d)->data ? gw_dconn_backend_output(d)->data : "",
                (int)out->len, out->data ? out->data : "");
    if (out->len && memcmp(out->data, "HTTP/1.1 ", out->len < 9 ? out->len : 9) != 0)
        abort();
    gw_dconn_free(d);
    return 0;
}
