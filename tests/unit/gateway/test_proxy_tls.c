/* HTTPS through the proxy over real sockets: the proxy's threads serve an
 * HTTPS listener (and an HTTP one) on 127.0.0.1 port 0; the clients are
 * real OpenSSL clients over blocking sockets that verify the chain against
 * a CA made at setup; backends are small blocking HTTP servers that echo
 * what they saw. Covers certificate choice by SNI, routing by Host,
 * keep-alive, a chunked upload and a large response through TLS,
 * X-Forwarded-Proto, --hsts, garbage on the TLS port, and a reload that
 * swaps a certificate for new handshakes only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "gateway/proxy.h"
#include "gateway/routes.h"
#include "gateway/tls.h"

#include "certs_test.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#define BIG_LEN ((size_t)1536 * 1024) /* /big response: 1.5 MiB */

/* ---- certificates ------------------------------------------------------------ */

static cert_t c_a, c_a2, c_b, c_def;

/* ---- backends ------------------------------------------------------------------ */

typedef struct backend {
    char name[8];
    int fd, port;
    pthread_t thr;
    atomic_bool stop;
    atomic_int live;
    char tail[64];       /* GET /ws-half: what came after the backend's FIN */
    atomic_int tail_len; /* -1 until the client's FIN ended it */
} backend_t;

typedef struct bconn {
    backend_t *b;
    int fd;
} bconn_t;

static bool send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

static const char *hdr_find(const char *head, size_t hl, const char *name, size_t *vl)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + hl;
    while (p < end) {
        const char *eol = memmem(p, (size_t)(end - p), "\r\n", 2);
        if (!eol)
            break;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            *vl = (size_t)(eol - v);
            return v;
        }
        p = eol + 2;
    }
    return NULL;
}

/* Make sure in holds at least `need` bytes from `from` on. */
static bool bfill(int fd, buf_t *in, size_t need)
{
    char tmp[65536];
    while (in->len < need) {
        ssize_t r = recv(fd, tmp, sizeof tmp, 0);
        if (r <= 0)
            return false;
        (void)buf_append(in, tmp, (size_t)r);
    }
    return true;
}

/* Serve requests on one connection: a body (Content-Length or chunked) is
 * counted; the answer names the backend and echoes what routing needs.
 * GET /big answers BIG_LEN bytes of a pattern. */
static void *bconn_main(void *arg)
{
    bconn_t *bc = arg;
    backend_t *b = bc->b;
    int fd = bc->fd;
    free(bc);
    buf_t in = BUF_INIT(0);
    char *big = NULL;
    for (;;) {
        char *e;
        size_t pos = 0;
        while (!(e = in.len >= 4 ? memmem(in.data, in.len, "\r\n\r\n", 4) : NULL))
            if (!bfill(fd, &in, in.len + 1))
                goto done;
        size_t hl = (size_t)(e + 4 - in.data);
        char method[16] = "", path[256] = "";
        sscanf(in.data, "%15s %255s", method, path);
        size_t vl = 0;
        const char *v;
        char xfp[32] = "-", host[128] = "-";
        if ((v = hdr_find(in.data, hl, "X-Forwarded-Proto", &vl)) && vl < sizeof xfp)
            snprintf(xfp, sizeof xfp, "%.*s", (int)vl, v);
        if ((v = hdr_find(in.data, hl, "Host", &vl)) && vl < sizeof host)
            snprintf(host, sizeof host, "%.*s", (int)vl, v);
        bool chunked = (v = hdr_find(in.data, hl, "Transfer-Encoding", &vl)) && vl >= 7 &&
                       strncasecmp(v, "chunked", 7) == 0;
        long cl = (v = hdr_find(in.data, hl, "Content-Length", &vl)) ? strtol(v, NULL, 10) : 0;
        size_t body = 0;
        unsigned sum = 0; /* a checksum of the body, so corruption shows */
        pos = hl;
        if (chunked) {
            for (;;) {
                char *eol;
                while (
                    !(eol = in.len > pos ? memmem(in.data + pos, in.len - pos, "\r\n", 2) : NULL))
                    if (!bfill(fd, &in, in.len + 1))
                        goto done;
                long sz = strtol(in.data + pos, NULL, 16);
                pos = (size_t)(eol - in.data) + 2;
                if (!bfill(fd, &in, pos + (size_t)sz + 2))
                    goto done;
                for (long i = 0; i < sz; i++)
                    sum = sum * 31 + (unsigned char)in.data[pos + (size_t)i];
                body += (size_t)sz;
                pos += (size_t)sz + 2;
                if (sz == 0)
                    break;
            }
        } else if (cl > 0) {
            if (!bfill(fd, &in, hl + (size_t)cl))
                goto done;
            for (long i = 0; i < cl; i++)
                sum = sum * 31 + (unsigned char)in.data[hl + (size_t)i];
            body = (size_t)cl;
            pos = hl + (size_t)cl;
        }
        buf_consume(&in, pos);
        if (strcmp(path, "/ws-half") == 0) {
            /* a tunnel whose backend ends its direction first: answer,
             * FIN, then collect what the client still sends until its FIN */
            static const char r101[] = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: echo\r\n"
                                       "Connection: Upgrade\r\n\r\nBYE";
            if (!send_all(fd, r101, sizeof r101 - 1))
                goto done;
            shutdown(fd, SHUT_WR);
            size_t got = in.len < sizeof b->tail ? in.len : sizeof b->tail - 1;
            memcpy(b->tail, in.data, got);
            ssize_t n;
            while ((n = recv(fd, b->tail + got, sizeof b->tail - 1 - got, 0)) > 0)
                got += (size_t)n;
            atomic_store(&b->tail_len, n == 0 ? (int)got : -2);
            goto done;
        }
        if (strcmp(path, "/big") == 0) {
            if (!big) {
                big = malloc(BIG_LEN);
                for (size_t i = 0; i < BIG_LEN; i++)
                    big[i] = (char)('a' + i % 23);
            }
            char h[128];
            int n =
                snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", BIG_LEN);
            if (!send_all(fd, h, (size_t)n) || !send_all(fd, big, BIG_LEN))
                goto done;
            continue;
        }
        char bodytxt[512];
        int bn = snprintf(bodytxt, sizeof bodytxt,
                          "backend=%s method=%s path=%s host=%s xfp=%s len=%zu sum=%u\n", b->name,
                          method, path, host, xfp, body, sum);
        char h[128];
        int n = snprintf(
            h, sizeof h,
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: %d\r\n\r\n", bn);
        if (!send_all(fd, h, (size_t)n) || !send_all(fd, bodytxt, (size_t)bn))
            goto done;
    }
done:
    free(big);
    buf_free(&in);
    close(fd);
    atomic_fetch_sub(&b->live, 1);
    return NULL;
}

static void *backend_main(void *arg)
{
    backend_t *b = arg;
    while (!atomic_load(&b->stop)) {
        struct pollfd pf = {b->fd, POLLIN, 0};
        if (poll(&pf, 1, 50) <= 0)
            continue;
        int fd = accept(b->fd, NULL, NULL);
        if (fd < 0)
            continue;
        bconn_t *bc = malloc(sizeof *bc);
        bc->b = b;
        bc->fd = fd;
        atomic_fetch_add(&b->live, 1);
        pthread_t t;
        pthread_create(&t, NULL, bconn_main, bc);
        pthread_detach(t);
    }
    return NULL;
}

static backend_t *backend_start(const char *name)
{
    backend_t *b = calloc(1, sizeof *b);
    atomic_store(&b->tail_len, -1);
    snprintf(b->name, sizeof b->name, "%s", name);
    b->fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(b->fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(bind(b->fd, (struct sockaddr *)&sa, sizeof sa), 0);
    assert_int_equal(listen(b->fd, 128), 0);
    socklen_t sl = sizeof sa;
    getsockname(b->fd, (struct sockaddr *)&sa, &sl);
    b->port = ntohs(sa.sin_port);
    pthread_create(&b->thr, NULL, backend_main, b);
    return b;
}

static void msleep(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void backend_stop(backend_t *b)
{
    atomic_store(&b->stop, true);
    pthread_join(b->thr, NULL);
    close(b->fd);
    /* connection threads end when the proxy (already freed) closed them */
    for (int i = 0; i < 200 && atomic_load(&b->live) > 0; i++)
        msleep(10);
    free(b);
}

/* ---- clients ------------------------------------------------------------------- */

static int tcp_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET,
                             .sin_port = htons((uint16_t)port),
                             .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof sa), 0);
    struct timeval tv = {5, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    return fd;
}

typedef struct tcl {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl; /* NULL: a plain HTTP connection */
    buf_t in;
} tcl_t;

/* A verifying TLS connection to the HTTPS port with SNI `sni` (NULL:
 * none); the handshake is done when it returns. */
static void tls_open(tcl_t *c, int port, const char *sni)
{
    memset(c, 0, sizeof *c);
    buf_init(&c->in, 0);
    c->fd = tcp_connect(port);
    c->ctx = SSL_CTX_new(TLS_client_method());
    X509_STORE_add_cert(SSL_CTX_get_cert_store(c->ctx), ca.crt);
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    if (sni) {
        SSL_set_tlsext_host_name(c->ssl, sni);
        SSL_set1_host(c->ssl, sni);
    } else {
        SSL_set1_host(c->ssl, "default.test");
    }
    SSL_set_fd(c->ssl, c->fd);
    int rc = SSL_connect(c->ssl);
    if (rc != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof e);
        fail_msg("handshake with %s failed: %s", sni ? sni : "(no SNI)", e);
    }
    assert_int_equal(SSL_get_verify_result(c->ssl), X509_V_OK);
}

static void plain_open(tcl_t *c, int port)
{
    memset(c, 0, sizeof *c);
    buf_init(&c->in, 0);
    c->fd = tcp_connect(port);
}

static void tcl_close(tcl_t *c)
{
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
        SSL_CTX_free(c->ctx);
    }
    close(c->fd);
    buf_free(&c->in);
}

static bool tcl_send(tcl_t *c, const void *p, size_t n)
{
    if (!c->ssl)
        return send_all(c->fd, p, n);
    return n == 0 || SSL_write(c->ssl, p, (int)n) == (int)n;
}

static bool tcl_more(tcl_t *c)
{
    char tmp[65536];
    int r = c->ssl ? SSL_read(c->ssl, tmp, sizeof tmp) : (int)recv(c->fd, tmp, sizeof tmp, 0);
    if (r <= 0)
        return false;
    (void)buf_append(&c->in, tmp, (size_t)r);
    return true;
}

typedef struct resp {
    int status;
    char head[2048];
    buf_t body;
} resp_t;

/* One response (Content-Length framed; the backends always send it). */
static bool tcl_read_resp(tcl_t *c, resp_t *r)
{
    char *e;
    while (!(e = c->in.len >= 4 ? memmem(c->in.data, c->in.len, "\r\n\r\n", 4) : NULL))
        if (!tcl_more(c))
            return false;
    size_t hl = (size_t)(e + 4 - c->in.data);
    snprintf(r->head, sizeof r->head, "%.*s", (int)hl, c->in.data);
    r->status = atoi(r->head + 9);
    size_t vl;
    const char *v = hdr_find(c->in.data, hl, "Content-Length", &vl);
    size_t cl = v ? (size_t)strtoull(v, NULL, 10) : 0;
    while (c->in.len < hl + cl)
        if (!tcl_more(c))
            return false;
    buf_free(&r->body);
    buf_init(&r->body, 0);
    (void)buf_append(&r->body, c->in.data + hl, cl);
    buf_consume(&c->in, hl + cl);
    return true;
}

static void get(tcl_t *c, const char *host, const char *path, resp_t *r)
{
    char req[512];
    int n = snprintf(req, sizeof req, "GET %s HTTP/1.1\r\nHost: %s\r\n\r\n", path, host);
    assert_true(tcl_send(c, req, (size_t)n));
    assert_true(tcl_read_resp(c, r));
}

static bool body_has(const resp_t *r, const char *s)
{
    return r->body.len && memmem(r->body.data, r->body.len, s, strlen(s)) != NULL;
}

static bool peer_is(const tcl_t *c, const cert_t *want)
{
    X509 *x = SSL_get0_peer_certificate(c->ssl);
    return x && X509_cmp(x, want->crt) == 0;
}

/* ---- fixture ---------------------------------------------------------------------- */

typedef struct fx {
    backend_t *a, *b, *d;
    gw_tls_ctx_t *tls;
    gw_proxy_t *p;
    gw_snapshot_t *snap;
    int http_port, https_port;
    char *files[6];
} fx_t;

static void add_route(gw_builder_t *bl, const char *pool, int port, const char *host)
{
    gw_endpoint_in_t ep = {"127.0.0.1", port};
    gw_builder_pool(bl, pool, &ep, 1);
    gw_route_in_t r = {
        .kind = GW_ROUTE_HTTP, .app = pool, .host = host, .path = "/", .target = pool};
    assert_int_equal(gw_builder_route(bl, &r, NULL), 0);
}

static int group_setup(void **state)
{
    (void)state;
    signal(SIGPIPE, SIG_IGN);
    if (certs_dir_make("drover-ptls") < 0)
        return -1;
    ca = make_cert("drover proxy test CA", NULL, false, 30);
    c_a = make_cert("a.test", "DNS:a.test", false, 30);
    c_a2 = make_cert("a.test", "DNS:a.test", false, 30);
    c_b = make_cert("b.test", "DNS:b.test", false, 30);
    c_def = make_cert("default.test", "DNS:default.test", false, 30);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    cert_t *all[] = {&c_a, &c_a2, &c_b, &c_def, &ca};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        cert_free(all[i]);
    certs_dir_remove();
    return 0;
}

static int setup(void **state)
{
    fx_t *f = calloc(1, sizeof *f);
    install("a", &c_a);
    install("b", &c_b);
    install("def", &c_def);
    const char *names[3] = {"a", "b", "def"};
    for (int i = 0; i < 3; i++) {
        f->files[2 * i] = xasprintf("%s/%s.crt", tmpdir, names[i]);
        f->files[2 * i + 1] = xasprintf("%s/%s.key", tmpdir, names[i]);
    }
    gw_tls_cert_in_t certs[3] = {{"a.test", f->files[0], f->files[1]},
                                 {"b.test", f->files[2], f->files[3]},
                                 {NULL, f->files[4], f->files[5]}};
    err_t err = {0};
    if (gw_tls_ctx_new(certs, 3, &f->tls, &err) < 0)
        fail_msg("tls: %s", err.msg);
    f->a = backend_start("A");
    f->b = backend_start("B");
    f->d = backend_start("D");
    gw_proxy_opts_t o = {.http_addr = "127.0.0.1:0",
                         .https_addr = "127.0.0.1:0",
                         .tls = f->tls,
                         .hsts_seconds = 600,
                         .threads = 2,
                         .header_timeout_ms = 2000};
    if (gw_proxy_start(&o, &f->p, &err) < 0)
        fail_msg("start: %s", err.msg);
    f->http_port = gw_proxy_http_port(f->p);
    f->https_port = gw_proxy_https_port(f->p);
    assert_true(f->https_port > 0 && f->https_port != f->http_port);
    gw_builder_t *bl = gw_builder_new(NULL);
    add_route(bl, "/a", f->a->port, "a.test");
    add_route(bl, "/b", f->b->port, "b.test");
    add_route(bl, "/d", f->d->port, NULL);
    f->snap = gw_builder_finish(bl, 1);
    gw_proxy_set_snapshot(f->p, f->snap);
    for (int i = 0; i < 200 && gw_proxy_applied_revision(f->p) < 1; i++)
        msleep(5);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fx_t *f = *state;
    gw_proxy_free(f->p);
    gw_tls_ctx_free(f->tls);
    gw_snapshot_unref(f->snap);
    backend_stop(f->a);
    backend_stop(f->b);
    backend_stop(f->d);
    for (int i = 0; i < 6; i++)
        free(f->files[i]);
    free(f);
    return 0;
}

/* ---- tests ------------------------------------------------------------------------ */

/* Each SNI gets its own certificate (verified against the CA) and its Host
 * its own backend; no SNI gets the default certificate. */
static void test_sni_and_routing(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    struct {
        const char *sni;
        const cert_t *cert;
        const char *backend;
    } cases[] = {{"a.test", &c_a, "backend=A "}, {"b.test", &c_b, "backend=B "}};
    for (size_t i = 0; i < 2; i++) {
        tcl_t c;
        tls_open(&c, f->https_port, cases[i].sni);
        assert_true(peer_is(&c, cases[i].cert));
        get(&c, cases[i].sni, "/hello", &r);
        assert_int_equal(r.status, 200);
        assert_true(body_has(&r, cases[i].backend));
        assert_true(body_has(&r, "path=/hello "));
        tcl_close(&c);
    }
    tcl_t c;
    tls_open(&c, f->https_port, NULL);
    assert_true(peer_is(&c, &c_def));
    get(&c, "other.test", "/", &r);
    assert_int_equal(r.status, 200);
    assert_true(body_has(&r, "backend=D "));
    tcl_close(&c);
    buf_free(&r.body);
}

/* Several requests over one TLS connection; X-Forwarded-Proto says https
 * there and http on the plain port; HSTS only over TLS. */
static void test_keepalive_xfp_hsts(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    tcl_t c;
    tls_open(&c, f->https_port, "a.test");
    for (int i = 0; i < 5; i++) {
        char path[32];
        snprintf(path, sizeof path, "/k%d", i);
        get(&c, i % 2 ? "A.Test:443" : "a.test", path, &r);
        assert_int_equal(r.status, 200);
        assert_true(body_has(&r, "backend=A "));
        assert_true(body_has(&r, "xfp=https "));
        assert_non_null(strstr(r.head, "\r\nStrict-Transport-Security: max-age=600\r\n"));
    }
    /* b.test has a certificate of its own: not on a connection that
     * proved a.test (421), and the connection goes on */
    get(&c, "b.test", "/k5", &r);
    assert_int_equal(r.status, 421);
    assert_true(body_has(&r, "b.test"));
    get(&c, "a.test", "/k6", &r);
    assert_int_equal(r.status, 200);
    /* our own answers carry it too */
    char bad[] = "GET / HTTP/1.1\r\n\r\n"; /* no Host: 400 */
    assert_true(tcl_send(&c, bad, sizeof bad - 1));
    assert_true(tcl_read_resp(&c, &r));
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.head, "Strict-Transport-Security: max-age=600"));
    tcl_close(&c);

    tcl_t p;
    plain_open(&p, f->http_port);
    get(&p, "a.test", "/plain", &r);
    assert_int_equal(r.status, 200);
    assert_true(body_has(&r, "backend=A "));
    assert_true(body_has(&r, "xfp=http "));
    assert_null(strstr(r.head, "Strict-Transport-Security"));
    tcl_close(&p);
    buf_free(&r.body);
}

/* A chunked upload (bigger than every buffer on the way) and a 1.5 MiB
 * response, both through TLS, arrive whole and unchanged. */
static void test_chunked_upload_big_response(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    tcl_t c;
    tls_open(&c, f->https_port, "b.test");
    const char *head = "POST /up HTTP/1.1\r\nHost: b.test\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_true(tcl_send(&c, head, strlen(head)));
    size_t total = 0;
    unsigned sum = 0;
    char chunk[20000];
    for (int i = 0; i < 40; i++) {
        size_t n = 1000 + (size_t)i * 397;
        for (size_t k = 0; k < n; k++) {
            chunk[k] = (char)(k * 7 + (size_t)i);
            sum = sum * 31 + (unsigned char)chunk[k];
        }
        char line[32];
        int ln = snprintf(line, sizeof line, "%zx\r\n", n);
        assert_true(tcl_send(&c, line, (size_t)ln));
        assert_true(tcl_send(&c, chunk, n));
        assert_true(tcl_send(&c, "\r\n", 2));
        total += n;
    }
    assert_true(tcl_send(&c, "0\r\n\r\n", 5));
    assert_true(tcl_read_resp(&c, &r));
    assert_int_equal(r.status, 200);
    char want[96];
    snprintf(want, sizeof want,
             "backend=B method=POST path=/up host=b.test xfp=https len=%zu sum=%u", total, sum);
    if (!body_has(&r, want))
        fail_msg("got %.*s, want %s", (int)r.body.len, r.body.data, want);

    /* the big response, twice on the same connection */
    for (int k = 0; k < 2; k++) {
        get(&c, "b.test", "/big", &r);
        assert_int_equal(r.status, 200);
        assert_int_equal(r.body.len, BIG_LEN);
        for (size_t i = 0; i < BIG_LEN; i++)
            if (r.body.data[i] != (char)('a' + i % 23))
                fail_msg("byte %zu of the big response differs", i);
    }
    get(&c, "b.test", "/after", &r);
    assert_true(body_has(&r, "path=/after "));
    tcl_close(&c);
    buf_free(&r.body);
}

/* Garbage and plain HTTP on the TLS port are closed (after an alert at
 * most); a TLS connection open meanwhile goes on working. */
static void test_garbage_closed(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    tcl_t good;
    tls_open(&good, f->https_port, "a.test");
    get(&good, "a.test", "/before", &r);
    assert_int_equal(r.status, 200);
    const char *bad[] = {"GET / HTTP/1.1\r\nHost: a.test\r\n\r\n",
                         "\x16\x03\x01\x00\x05garbagegarbagegarbage", "\x80\x01\x02\x03\x04zzz"};
    for (size_t i = 0; i < 3; i++) {
        int fd = tcp_connect(f->https_port);
        assert_true(send_all(fd, bad[i], strlen(bad[i])));
        char tmp[4096];
        ssize_t n;
        size_t got = 0;
        /* the connection ends (EOF or reset) instead of waiting for more */
        while ((n = recv(fd, tmp, sizeof tmp, 0)) > 0)
            got += (size_t)n;
        assert_true(n == 0 || errno == ECONNRESET);
        assert_true(got < 64); /* an alert, never an HTTP answer */
        close(fd);
    }
    /* a client that never finishes its handshake is closed at the head
     * timeout (2 s here), which starts at accept */
    int fd = tcp_connect(f->https_port);
    assert_true(send_all(fd, "\x16\x03\x01", 3)); /* the start of a record, no more */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    char tmp[64];
    assert_true(recv(fd, tmp, sizeof tmp, 0) <= 0);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    assert_true(secs > 1.5 && secs < 4.5);
    close(fd);
    get(&good, "a.test", "/after", &r);
    assert_int_equal(r.status, 200);
    assert_true(body_has(&r, "path=/after "));
    tcl_close(&good);
    buf_free(&r.body);
}

/* A reload swaps a.test's certificate for new handshakes; a connection
 * made before keeps working on the old one. */
static void test_reload(void **state)
{
    fx_t *f = *state;
    resp_t r = {0};
    tcl_t old;
    tls_open(&old, f->https_port, "a.test");
    assert_true(peer_is(&old, &c_a));
    install("a", &c_a2);
    err_t err = {0};
    assert_int_equal(gw_tls_ctx_reload(f->tls, &err), 0);
    tcl_t c;
    tls_open(&c, f->https_port, "a.test");
    assert_true(peer_is(&c, &c_a2));
    get(&c, "a.test", "/new", &r);
    assert_true(body_has(&r, "backend=A "));
    tcl_close(&c);
    tls_open(&c, f->https_port, "b.test"); /* b untouched */
    assert_true(peer_is(&c, &c_b));
    tcl_close(&c);
    get(&old, "a.test", "/old", &r);
    assert_int_equal(r.status, 200);
    assert_true(body_has(&r, "path=/old "));
    tcl_close(&old);
    buf_free(&r.body);
}

/* Many TLS clients at once, each with a few keep-alive requests, on both
 * threads. */
typedef struct par {
    int port;
    atomic_int *ok;
} par_t;

static void *par_main(void *arg)
{
    par_t *pa = arg;
    for (int k = 0; k < 3; k++) {
        tcl_t c;
        tls_open(&c, pa->port, k % 2 ? "b.test" : "a.test");
        resp_t r = {0};
        for (int i = 0; i < 4; i++) {
            get(&c, k % 2 ? "b.test" : "a.test", "/p", &r);
            if (r.status == 200 && body_has(&r, k % 2 ? "backend=B " : "backend=A "))
                atomic_fetch_add(pa->ok, 1);
        }
        buf_free(&r.body);
        tcl_close(&c);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    fx_t *f = *state;
    atomic_int ok = 0;
    pthread_t th[8];
    par_t pa = {f->https_port, &ok};
    for (int i = 0; i < 8; i++)
        pthread_create(&th[i], NULL, par_main, &pa);
    for (int i = 0; i < 8; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&ok), 8 * 3 * 4);
    buf_t m = BUF_INIT(0);
    gw_proxy_metrics(f->p, &m);
    assert_non_null(memmem(m.data, m.len, "drover_gateway_tls_connections_total", 36));
    buf_free(&m);
}

/* A WebSocket-style tunnel whose backend ends its direction first, over
 * TLS and plain HTTP: the client gets the backend's last bytes, then the
 * end (close_notify over TLS, FIN otherwise), can still send, and the
 * backend receives that and the client's own end. */
static void test_tunnel_half_close(void **state)
{
    fx_t *f = *state;
    static const char up[] =
        "GET /ws-half HTTP/1.1\r\nHost: a.test\r\nUpgrade: echo\r\nConnection: Upgrade\r\n\r\n";
    for (int tls = 1; tls >= 0; tls--) {
        atomic_store(&f->a->tail_len, -1);
        tcl_t c;
        if (tls)
            tls_open(&c, f->https_port, "a.test");
        else
            plain_open(&c, f->http_port);
        assert_true(tcl_send(&c, up, sizeof up - 1));
        char *e;
        while (!(e = c.in.len >= 4 ? memmem(c.in.data, c.in.len, "\r\n\r\n", 4) : NULL) ||
               c.in.len < (size_t)(e + 4 - c.in.data) + 3)
            assert_true(tcl_more(&c));
        assert_memory_equal(c.in.data, "HTTP/1.1 101", 12);
        assert_memory_equal(e + 4, "BYE", 3);
        assert_int_equal(c.in.len, (size_t)(e + 4 - c.in.data) + 3);
        /* the backend's end arrives as the end of the stream */
        char tmp[64];
        if (tls) {
            int r = SSL_read(c.ssl, tmp, sizeof tmp);
            assert_int_equal(r, 0);
            assert_int_equal(SSL_get_error(c.ssl, r), SSL_ERROR_ZERO_RETURN);
        } else {
            assert_int_equal(recv(c.fd, tmp, sizeof tmp, 0), 0);
        }
        /* the other direction still flows */
        assert_true(tcl_send(&c, "late", 4));
        if (tls)
            SSL_shutdown(c.ssl);
        else
            shutdown(c.fd, SHUT_WR);
        for (int i = 0; i < 200 && atomic_load(&f->a->tail_len) == -1; i++)
            msleep(10);
        assert_int_equal(atomic_load(&f->a->tail_len), 4);
        assert_memory_equal(f->a->tail, "late", 4);
        tcl_close(&c);
    }
}

int main(void)
{
    log_setup(LOG_WARN, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_sni_and_routing, setup, teardown),
        cmocka_unit_test_setup_teardown(test_keepalive_xfp_hsts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_chunked_upload_big_response, setup, teardown),
        cmocka_unit_test_setup_teardown(test_garbage_closed, setup, teardown),
        cmocka_unit_test_setup_teardown(test_reload, setup, teardown),
        cmocka_unit_test_setup_teardown(test_concurrent, setup, teardown),
        cmocka_unit_test_setup_teardown(test_tunnel_half_close, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
