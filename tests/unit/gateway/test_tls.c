/* The gateway's TLS layer (src/gateway/tls.c), driven by a real OpenSSL
 * client over memory BIOs: handshakes and data both ways on TLS 1.2 and
 * 1.3, certificate choice by SNI, reloads (replaced, broken and concurrent
 * with handshakes on other threads), resumption, shutdown, bounds, and
 * hostile input. Certificates are generated at setup into a temp dir. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "gateway/tls.h"

#include "certs_test.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* Entries point at <name>.crt / <name>.key; strings live until cin_free. */
typedef struct cin {
    gw_tls_cert_in_t v[8];
    size_t n;
} cin_t;

static void cin_add(cin_t *c, const char *host, const char *name)
{
    char *crt = xasprintf("%s/%s.crt", tmpdir, name);
    char *key = xasprintf("%s/%s.key", tmpdir, name);
    c->v[c->n++] = (gw_tls_cert_in_t){host, crt, key};
}

static void cin_free(cin_t *c)
{
    for (size_t i = 0; i < c->n; i++) {
        free((char *)c->v[i].cert_file);
        free((char *)c->v[i].key_file);
    }
    c->n = 0;
}

/* Leaves used across tests. */
static cert_t c_a, c_b, c_wild, c_def, c_a2, c_rsa;

static int group_setup(void **state)
{
    (void)state;
    if (certs_dir_make("drover-tls") < 0)
        return -1;
    ca = make_cert("drover test CA", NULL, false, 30);
    c_a = make_cert("a.example.com", "DNS:a.example.com", false, 30);
    c_a2 = make_cert("a.example.com", "DNS:a.example.com", false, 30);
    c_b = make_cert("b.example.com", "DNS:b.example.com", false, 30);
    c_wild = make_cert("*.example.com", "DNS:*.example.com", false, 30);
    c_def = make_cert("default.test", "DNS:default.test", false, 30);
    c_rsa = make_cert("rsa.example.com", "DNS:rsa.example.com", true, 30);
    install("a", &c_a);
    install("a2", &c_a2);
    install("b", &c_b);
    install("wild", &c_wild);
    install("def", &c_def);
    install("rsa", &c_rsa);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    cert_t *all[] = {&c_a, &c_a2, &c_b, &c_wild, &c_def, &c_rsa, &ca};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++)
        cert_free(all[i]);
    certs_dir_remove();
    return 0;
}

/* ---- an OpenSSL client wired to a gw_tls_conn in memory ---------------------- */

typedef struct pair {
    gw_tls_conn_t *s;
    SSL_CTX *cctx;
    SSL *cl;
    BIO *cin;   /* the server's ciphertext, for the client */
    BIO *cout;  /* the client's ciphertext, for the server */
    int srv_rc; /* first error the server side reported */
    buf_t got;  /* plaintext the server read */
} pair_t;

static void pair_open_ex(pair_t *p, gw_tls_ctx_t *ctx, const char *sni, int version,
                         SSL_SESSION *resume)
{
    memset(p, 0, sizeof *p);
    buf_init(&p->got, 8u << 20);
    p->s = gw_tls_conn_new(ctx);
    p->cctx = SSL_CTX_new(TLS_client_method());
    assert_non_null(p->cctx);
    if (version) {
        SSL_CTX_set_min_proto_version(p->cctx, version);
        SSL_CTX_set_max_proto_version(p->cctx, version);
    }
    if (version && version < TLS1_2_VERSION) {
        /* Let the client even try old protocols: the server must refuse. */
        SSL_CTX_set_security_level(p->cctx, 0);
        SSL_CTX_set_cipher_list(p->cctx, "DEFAULT:@SECLEVEL=0");
    }
    X509_STORE_add_cert(SSL_CTX_get_cert_store(p->cctx), ca.crt);
    SSL_CTX_set_verify(p->cctx, SSL_VERIFY_NONE, NULL); /* checked by hand */
    p->cl = SSL_new(p->cctx);
    if (sni) {
        SSL_set_tlsext_host_name(p->cl, sni);
        SSL_set1_host(p->cl, sni);
    }
    static const unsigned char alpn[] = "\x02h2\x08http/1.1";
    SSL_set_alpn_protos(p->cl, alpn, sizeof alpn - 1);
    if (resume)
        SSL_set_session(p->cl, resume);
    p->cin = BIO_new(BIO_s_mem());
    p->cout = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(p->cin, -1);
    SSL_set_bio(p->cl, p->cin, p->cout);
    SSL_set_connect_state(p->cl);
}

static void pair_open(pair_t *p, gw_tls_ctx_t *ctx, const char *sni, int version)
{
    pair_open_ex(p, ctx, sni, version, NULL);
}

static void pair_close(pair_t *p)
{
    SSL_free(p->cl);
    SSL_CTX_free(p->cctx);
    gw_tls_conn_free(p->s);
    buf_free(&p->got);
}

/* Server side of a read: everything that decrypts goes to p->got. */
static void server_drain(pair_t *p)
{
    char tmp[7000]; /* not a record multiple: reads split records */
    ssize_t r;
    while ((r = gw_tls_read(p->s, tmp, sizeof tmp)) > 0)
        assert_int_equal(buf_append(&p->got, tmp, (size_t)r), 0);
    if (r < 0 && !p->srv_rc)
        p->srv_rc = (int)r;
}

/* Move ciphertext both ways until nothing moves; `step` is the size of the
 * pieces fed to the server (1 makes every record arrive byte by byte). */
static void pump_step(pair_t *p, size_t step)
{
    bool moved = true;
    while (moved) {
        moved = false;
        char b[4096];
        int n;
        size_t want = step < sizeof b ? step : sizeof b;
        while ((n = BIO_read(p->cout, b, (int)want)) > 0) {
            int rc = gw_tls_feed(p->s, b, (size_t)n);
            if (rc < 0 && !p->srv_rc)
                p->srv_rc = rc;
            server_drain(p);
            moved = true;
        }
        server_drain(p);
        size_t len;
        const void *o;
        while ((o = gw_tls_out(p->s, &len))) {
            assert_int_equal(BIO_write(p->cin, o, (int)len), (int)len);
            gw_tls_out_consume(p->s, len);
            moved = true;
        }
    }
}

static void pump(pair_t *p)
{
    pump_step(p, SIZE_MAX);
}

/* 0 when both sides finished the handshake; the server's error (-EPROTO)
 * or -1 when the client gave up. */
static int handshake_step(pair_t *p, size_t step)
{
    for (int i = 0; i < 50; i++) {
        int r = SSL_do_handshake(p->cl);
        int e = r == 1 ? 0 : SSL_get_error(p->cl, r);
        pump_step(p, step);
        if (p->srv_rc)
            return p->srv_rc;
        if (r == 1 && gw_tls_handshake_done(p->s))
            return 0;
        if (r != 1 && e != SSL_ERROR_WANT_READ) {
            ERR_clear_error();
            return -1;
        }
    }
    return -1;
}

static int handshake(pair_t *p)
{
    return handshake_step(p, SIZE_MAX);
}

/* Client reads whatever has arrived (after a pump), into out. */
static size_t client_read(pair_t *p, char *out, size_t cap)
{
    size_t got = 0;
    pump(p);
    while (got < cap) {
        int r = SSL_read(p->cl, out + got, (int)(cap - got > 65536 ? 65536 : cap - got));
        if (r <= 0)
            break;
        got += (size_t)r;
    }
    return got;
}

static void client_write(pair_t *p, const void *data, size_t n)
{
    assert_int_equal(SSL_write(p->cl, data, (int)n), (int)n);
    pump(p);
}

static const char *peer_cn(pair_t *p, char *buf, size_t cap)
{
    X509 *x = SSL_get0_peer_certificate(p->cl);
    assert_non_null(x);
    assert_true(X509_NAME_get_text_by_NID(X509_get_subject_name(x), NID_commonName, buf, (int)cap) >
                0);
    return buf;
}

static bool peer_is(pair_t *p, const cert_t *c)
{
    X509 *x = SSL_get0_peer_certificate(p->cl);
    return x && X509_cmp(x, c->crt) == 0;
}

static gw_tls_ctx_t *ctx_of(cin_t *ci)
{
    gw_tls_ctx_t *ctx = NULL;
    err_t err = {0};
    int rc = gw_tls_ctx_new(ci->v, ci->n, &ctx, &err);
    if (rc)
        fail_msg("gw_tls_ctx_new: %d %s", rc, err.msg);
    return ctx;
}

/* ---- handshake and data ------------------------------------------------------ */

static void echo_on(int version)
{
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "a");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    pair_t p;
    pair_open(&p, ctx, "a.example.com", version);
    assert_false(gw_tls_handshake_done(p.s));
    assert_null(gw_tls_sni(p.s));
    assert_int_equal(handshake(&p), 0);
    assert_int_equal(SSL_version(p.cl), version);
    assert_string_equal(gw_tls_sni(p.s), "a.example.com");
    assert_null(gw_tls_error(p.s));
    /* ALPN: of "h2,http/1.1" only http/1.1 is ever chosen. */
    const unsigned char *proto;
    unsigned plen;
    SSL_get0_alpn_selected(p.cl, &proto, &plen);
    assert_int_equal(plen, 8);
    assert_memory_equal(proto, "http/1.1", 8);
    /* The chain verifies against the CA, for that host. */
    assert_int_equal(SSL_get_verify_result(p.cl), X509_V_OK);
    STACK_OF(X509) *chain = SSL_get_peer_cert_chain(p.cl);
    assert_int_equal(sk_X509_num(chain), 2);

    const char req[] = "GET / HTTP/1.1\r\nHost: a.example.com\r\n\r\n";
    client_write(&p, req, sizeof req - 1);
    assert_int_equal(p.srv_rc, 0);
    assert_int_equal(p.got.len, sizeof req - 1);
    assert_memory_equal(p.got.data, req, sizeof req - 1);

    const char resp[] = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    assert_int_equal(gw_tls_write(p.s, resp, sizeof resp - 1), 0);
    assert_true(gw_tls_pending(p.s) > sizeof resp - 1); /* records, not plaintext */
    char back[256];
    assert_int_equal(client_read(&p, back, sizeof back), sizeof resp - 1);
    assert_memory_equal(back, resp, sizeof resp - 1);
    assert_int_equal(gw_tls_pending(p.s), 0);

    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

static void test_echo_tls13(void **state)
{
    (void)state;
    echo_on(TLS1_3_VERSION);
}

static void test_echo_tls12(void **state)
{
    (void)state;
    echo_on(TLS1_2_VERSION);
}

/* TLS 1.2 with an RSA certificate: the ECDHE-RSA suites. */
static void test_echo_tls12_rsa(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, "rsa.example.com", "rsa");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    pair_t p;
    pair_open(&p, ctx, "rsa.example.com", TLS1_2_VERSION);
    assert_int_equal(handshake(&p), 0);
    assert_non_null(strstr(SSL_get_cipher_name(p.cl), "ECDHE-RSA-"));
    assert_non_null(strstr(SSL_get_cipher_name(p.cl), "GCM")); /* AEAD only */
    client_write(&p, "ping", 4);
    assert_int_equal(p.got.len, 4);
    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* Records cut into single bytes and plaintext read in odd sizes: nothing
 * assumes a feed holds whole records. */
static void test_byte_at_a_time(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    for (int v = 0; v < 2; v++) {
        pair_t p;
        pair_open(&p, ctx, "x.test", v ? TLS1_3_VERSION : TLS1_2_VERSION);
        assert_int_equal(handshake_step(&p, 1), 0);
        char msg[20000];
        for (size_t i = 0; i < sizeof msg; i++)
            msg[i] = (char)(i * 7);
        assert_int_equal(SSL_write(p.cl, msg, sizeof msg), (int)sizeof msg);
        pump_step(&p, 1);
        assert_int_equal(p.srv_rc, 0);
        assert_int_equal(p.got.len, sizeof msg);
        assert_memory_equal(p.got.data, msg, sizeof msg);
        pair_close(&p);
    }
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* A megabyte each way through the bounded buffers: the server's writes are
 * refused past the bound (-ENOBUFS, nothing taken) and accepted again
 * once the client has taken the ciphertext. */
static void test_large_transfer_and_bounds(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    pair_t p;
    pair_open(&p, ctx, NULL, 0);
    assert_int_equal(handshake(&p), 0);

    size_t total = 1u << 20;
    char *data = xmalloc(total);
    for (size_t i = 0; i < total; i++)
        data[i] = (char)(i % 251);
    for (size_t off = 0; off < total; off += 16384)
        client_write(&p, data + off, 16384);
    assert_int_equal(p.srv_rc, 0);
    assert_int_equal(p.got.len, total);
    assert_memory_equal(p.got.data, data, total);

    char *back = xmalloc(total);
    size_t sent = 0, got = 0;
    int refused = 0;
    while (sent < total) {
        size_t k = total - sent < 50000 ? total - sent : 50000;
        int rc = gw_tls_write(p.s, data + sent, k);
        if (rc == -ENOBUFS) {
            refused++;
            assert_true(gw_tls_writable(p.s) < k);
            assert_true(gw_tls_pending(p.s) <= GW_TLS_OUT_MAX + GW_TLS_OUT_MAX / 64);
            got += client_read(&p, back + got, total - got);
            continue;
        }
        assert_int_equal(rc, 0);
        sent += k;
    }
    got += client_read(&p, back + got, total - got);
    assert_true(refused > 0);
    assert_int_equal(got, total);
    assert_memory_equal(back, data, total);

    /* Input bound: more than GW_TLS_IN_MAX waiting is refused whole, and
     * gw_tls_feed_room says how much fits. A record header announcing a
     * full record, then bytes the server cannot decrypt yet (incomplete). */
    assert_int_equal(gw_tls_feed_room(p.s), GW_TLS_IN_MAX);
    char *big = xcalloc(1, GW_TLS_IN_MAX + 1);
    assert_int_equal(gw_tls_feed(p.s, big, GW_TLS_IN_MAX + 1), -ENOBUFS);
    assert_null(gw_tls_error(p.s));
    assert_int_equal(gw_tls_feed_room(p.s), GW_TLS_IN_MAX);
    assert_int_equal(SSL_write(p.cl, data, 16384), 16384);
    char rec[20000];
    int rn = BIO_read(p.cout, rec, sizeof rec);
    assert_true(rn > 16384);
    assert_int_equal(gw_tls_feed(p.s, rec, 1000), 0);
    size_t room = gw_tls_feed_room(p.s);
    assert_int_equal(room, GW_TLS_IN_MAX - 1000); /* waiting for a read */
    assert_int_equal(gw_tls_feed(p.s, big, room + 1), -ENOBUFS);
    char tmp[64];
    assert_int_equal(gw_tls_read(p.s, tmp, sizeof tmp), 0); /* record incomplete */
    /* OpenSSL holds the partial record itself (bounded by one record). */
    assert_int_equal(gw_tls_feed_room(p.s), GW_TLS_IN_MAX);
    assert_int_equal(gw_tls_feed(p.s, rec + 1000, (size_t)rn - 1000), 0);
    p.got.len = 0;
    server_drain(&p);
    assert_int_equal(p.got.len, 16384);
    assert_int_equal(gw_tls_feed_room(p.s), GW_TLS_IN_MAX);
    free(big);
    free(back);
    free(data);
    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* What gw_tls_out hands out stays put while more ciphertext is produced,
 * so the proxy can pass it to an asynchronous write. */
static void test_out_run_is_stable(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    pair_t p;
    pair_open(&p, ctx, NULL, TLS1_3_VERSION);
    assert_int_equal(handshake(&p), 0);
    char chunk[10000];
    memset(chunk, 'x', sizeof chunk);
    assert_int_equal(gw_tls_write(p.s, chunk, sizeof chunk), 0);
    size_t len1;
    const void *run = gw_tls_out(p.s, &len1);
    assert_non_null(run);
    char *copy = xmemdup(run, len1);
    for (int i = 0; i < 10; i++)
        assert_int_equal(gw_tls_write(p.s, chunk, sizeof chunk), 0);
    size_t len2;
    assert_ptr_equal(gw_tls_out(p.s, &len2), run);
    assert_int_equal(len2, len1);
    assert_memory_equal(run, copy, len1);
    assert_true(gw_tls_pending(p.s) > len1);
    /* Send half, then the rest, then the next run. */
    assert_int_equal(BIO_write(p.cin, run, (int)(len1 / 2)), (int)(len1 / 2));
    gw_tls_out_consume(p.s, len1 / 2);
    size_t len3;
    assert_ptr_equal(gw_tls_out(p.s, &len3), (const char *)run + len1 / 2);
    assert_int_equal(len3, len1 - len1 / 2);
    free(copy);
    char *back = xmalloc(11 * sizeof chunk);
    assert_int_equal(client_read(&p, back, 11 * sizeof chunk), 11 * sizeof chunk);
    free(back);
    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* Plaintext written before the handshake finished goes out right after it,
 * and so does a shutdown asked for meanwhile. */
static void test_write_before_handshake(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    pair_t p;
    pair_open(&p, ctx, NULL, TLS1_3_VERSION);
    assert_int_equal(gw_tls_write(p.s, "early", 5), 0);
    gw_tls_shutdown(p.s);
    assert_int_equal(gw_tls_write(p.s, "late", 4), -EPIPE);
    assert_int_equal(handshake(&p), 0);
    char back[16];
    assert_int_equal(client_read(&p, back, sizeof back), 5);
    assert_memory_equal(back, "early", 5);
    assert_int_equal(SSL_read(p.cl, back, sizeof back), 0);
    assert_int_equal(SSL_get_error(p.cl, 0), SSL_ERROR_ZERO_RETURN);
    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* close_notify both ways. */
static void test_shutdown(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    for (int v = 0; v < 2; v++) {
        int version = v ? TLS1_3_VERSION : TLS1_2_VERSION;
        /* The client closes: the server reads its data, then -EPIPE. */
        pair_t p;
        pair_open(&p, ctx, NULL, version);
        assert_int_equal(handshake(&p), 0);
        assert_int_equal(SSL_write(p.cl, "bye", 3), 3);
        assert_true(SSL_shutdown(p.cl) >= 0);
        pump(&p);
        assert_int_equal(p.got.len, 3);
        assert_int_equal(p.srv_rc, -EPIPE);
        char tmp[8];
        assert_int_equal(gw_tls_read(p.s, tmp, sizeof tmp), -EPIPE);
        assert_int_equal(gw_tls_feed(p.s, "x", 1), -EPIPE);
        assert_null(gw_tls_error(p.s));
        pair_close(&p);

        /* The server closes after its answer. */
        pair_open(&p, ctx, NULL, version);
        assert_int_equal(handshake(&p), 0);
        assert_int_equal(gw_tls_write(p.s, "last", 4), 0);
        gw_tls_shutdown(p.s);
        gw_tls_shutdown(p.s); /* twice is harmless */
        assert_int_equal(gw_tls_write(p.s, "more", 4), -EPIPE);
        char back[8];
        assert_int_equal(client_read(&p, back, sizeof back), 4);
        assert_int_equal(SSL_read(p.cl, back, sizeof back), 0);
        assert_int_equal(SSL_get_error(p.cl, 0), SSL_ERROR_ZERO_RETURN);
        pair_close(&p);
    }
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* ---- SNI --------------------------------------------------------------------- */

static void assert_served(gw_tls_ctx_t *ctx, const char *sni, const cert_t *want,
                          const char *want_sni)
{
    pair_t p;
    pair_open(&p, ctx, sni, 0);
    assert_int_equal(handshake(&p), 0);
    char cn[128];
    if (!peer_is(&p, want))
        fail_msg("SNI %s got %s", sni ? sni : "(none)", peer_cn(&p, cn, sizeof cn));
    if (want_sni)
        assert_string_equal(gw_tls_sni(p.s), want_sni);
    else
        assert_null(gw_tls_sni(p.s));
    pair_close(&p);
}

static void test_sni_selection(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "a");
    cin_add(&ci, "B.Example.COM.", "b"); /* normalized */
    cin_add(&ci, "*.example.com", "wild");
    cin_add(&ci, "", "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    assert_served(ctx, "a.example.com", &c_a, "a.example.com");
    assert_served(ctx, "A.EXAMPLE.com.", &c_a, "a.example.com");
    assert_served(ctx, "b.example.com", &c_b, "b.example.com");
    assert_served(ctx, "c.example.com", &c_wild, "c.example.com");
    /* a wildcard covers one label only, as the certificate does */
    assert_served(ctx, "x.c.example.com", &c_def, "x.c.example.com");
    assert_served(ctx, "example.com", &c_def, "example.com");
    assert_served(ctx, "other.org", &c_def, "other.org");
    assert_served(ctx, NULL, &c_def, NULL);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);

    /* No default entry: the first certificate is the default. */
    cin_add(&ci, "b.example.com", "b");
    cin_add(&ci, "a.example.com", "a");
    ctx = ctx_of(&ci);
    assert_served(ctx, NULL, &c_b, NULL);
    assert_served(ctx, "zzz.test", &c_b, "zzz.test");
    assert_served(ctx, "a.example.com", &c_a, "a.example.com");
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* Which Host headers a connection may serve (421 otherwise): the SNI name
 * in any spelling, any name the same certificate answers for; not a name
 * another certificate has; anything when the client sent no SNI. */
static void test_host_covered(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "a");
    cin_add(&ci, "b.example.com", "b");
    cin_add(&ci, "*.example.com", "wild");
    cin_add(&ci, "", "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    static const struct {
        const char *sni, *host;
        bool ok;
    } cases[] = {
        {"a.example.com", "a.example.com", true},
        {"a.example.com", "A.Example.Com:8443", true},
        {"a.example.com", "a.example.com.", true},
        {"a.example.com", "b.example.com", false}, /* b has its own */
        {"a.example.com", "c.example.com", false}, /* the wildcard's */
        {"c.example.com", "d.example.com", true},  /* both the wildcard's */
        {"other.org", "zzz.test", true},           /* both the default's */
        {"other.org", "a.example.com", false},
        {"a.example.com", "[::1]:443", true}, /* IP literals name no certificate */
        {"a.example.com", "", false},
        {NULL, "b.example.com", true}, /* no SNI: nothing to compare */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        pair_t p;
        pair_open(&p, ctx, cases[i].sni, 0);
        assert_int_equal(handshake(&p), 0);
        bool got = gw_tls_host_covered(p.s, cases[i].host, strlen(cases[i].host));
        if (got != cases[i].ok)
            fail_msg("SNI %s, Host %s: want %d", cases[i].sni ? cases[i].sni : "(none)",
                     cases[i].host, cases[i].ok);
        pair_close(&p);
    }
    char longhost[300];
    memset(longhost, 'a', sizeof(longhost));
    pair_t p;
    pair_open(&p, ctx, "a.example.com", 0);
    assert_int_equal(handshake(&p), 0);
    assert_false(gw_tls_host_covered(p.s, longhost, sizeof(longhost)));
    pair_close(&p);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* ---- configuration errors ------------------------------------------------------ */

static void expect_ctx_error(cin_t *ci, int code, const char *s1, const char *s2)
{
    gw_tls_ctx_t *ctx = (gw_tls_ctx_t *)1;
    err_t err = {0};
    int rc = gw_tls_ctx_new(ci->v, ci->n, &ctx, &err);
    if (rc != code)
        fail_msg("want %d got %d (%s)", code, rc, err.msg);
    assert_null(ctx);
    if (s1 && !strstr(err.msg, s1))
        fail_msg("'%s' does not name '%s'", err.msg, s1);
    if (s2 && !strstr(err.msg, s2))
        fail_msg("'%s' does not say '%s'", err.msg, s2);
    cin_free(ci);
}

static void test_ctx_errors(void **state)
{
    (void)state;
    cin_t ci = {0};
    expect_ctx_error(&ci, -EINVAL, "no certificates", NULL);

    cin_add(&ci, "a.example.com", "a");
    cin_add(&ci, "b.example.com", "missing");
    expect_ctx_error(&ci, -ENOENT, "missing.crt", "No such file");

    write_file("garbage.crt", "not a pem\n", 10);
    write_file("garbage.key", "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", 58);
    cin_add(&ci, "g.example.com", "garbage");
    expect_ctx_error(&ci, -EINVAL, "garbage.crt", "no start line");

    /* a good certificate with a broken key */
    char *crt = tpath("a.crt"), *key = tpath("garbage.key");
    ci.v[ci.n++] = (gw_tls_cert_in_t){"a.example.com", xstrdup(crt), xstrdup(key)};
    expect_ctx_error(&ci, -EINVAL, "garbage.key", "key");
    free(crt);
    free(key);

    /* a key of another certificate */
    crt = tpath("a.crt");
    key = tpath("b.key");
    ci.v[ci.n++] = (gw_tls_cert_in_t){"a.example.com", xstrdup(crt), xstrdup(key)};
    expect_ctx_error(&ci, -EINVAL, "does not match", "b.key");
    free(crt);
    free(key);

    cin_add(&ci, "a..example.com", "a");
    expect_ctx_error(&ci, -EINVAL, "a..example.com", NULL);
    cin_add(&ci, "*", "a");
    expect_ctx_error(&ci, -EINVAL, "'*'", NULL);
    cin_add(&ci, "a.*.com", "a");
    expect_ctx_error(&ci, -EINVAL, "a.*.com", NULL);
    cin_add(&ci, "a.example.com", "a");
    cin_add(&ci, "A.example.com", "b");
    expect_ctx_error(&ci, -EINVAL, "a.example.com", "twice");
    cin_add(&ci, NULL, "a");
    cin_add(&ci, "", "b");
    expect_ctx_error(&ci, -EINVAL, "default", "twice");
    ci.v[ci.n++] = (gw_tls_cert_in_t){"x.test", NULL, NULL};
    expect_ctx_error(&ci, -EINVAL, "x.test", "required");

    /* An encrypted key fails (it must never prompt on the terminal). */
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, c_a.key, EVP_aes_128_cbc(), (unsigned char *)"pw",
                                              2, NULL, NULL),
                     1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    write_file("enc.key", data, (size_t)n);
    BIO_free(b);
    crt = tpath("a.crt");
    key = tpath("enc.key");
    ci.v[ci.n++] = (gw_tls_cert_in_t){"a.example.com", xstrdup(crt), xstrdup(key)};
    expect_ctx_error(&ci, -EINVAL, "enc.key", NULL);
    free(crt);
    free(key);
}

/* ---- reload ------------------------------------------------------------------- */

static void test_reload(void **state)
{
    (void)state;
    install("r", &c_a);
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "r");
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    err_t err = {0};
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), 0); /* nothing changed */

    pair_t old;
    pair_open(&old, ctx, "a.example.com", TLS1_3_VERSION);
    assert_int_equal(handshake(&old), 0);
    assert_true(peer_is(&old, &c_a));

    /* Replaced: new handshakes get the new certificate... */
    install("r", &c_a2);
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), 0);
    pair_t p;
    pair_open(&p, ctx, "a.example.com", 0);
    assert_int_equal(handshake(&p), 0);
    assert_true(peer_is(&p, &c_a2));
    pair_close(&p);
    assert_served(ctx, NULL, &c_def, NULL); /* other hosts untouched */

    /* ...while the established connection carries on with its own. */
    client_write(&old, "still here", 10);
    assert_int_equal(old.got.len, 10);
    assert_int_equal(gw_tls_write(old.s, "yes", 3), 0);
    char back[8];
    assert_int_equal(client_read(&old, back, sizeof back), 3);
    assert_true(peer_is(&old, &c_a));
    pair_close(&old);

    /* A broken replacement: an error naming the file, the old cert stays;
     * asked again, the same error (logged once only). */
    write_file("r.crt", "-----BEGIN CERTIFICATE-----\nbroken\n", 36);
    err_clear(&err);
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "r.crt"));
    assert_non_null(strstr(err.msg, "a.example.com"));
    err_t err2 = {0};
    assert_int_equal(gw_tls_ctx_reload(ctx, &err2), -EINVAL);
    assert_string_equal(err2.msg, err.msg);
    assert_served(ctx, "a.example.com", &c_a2, "a.example.com");

    /* A certificate whose key was not replaced with it. */
    BIO *b = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(b, c_b.crt);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    write_file("r.crt", data, (size_t)n);
    BIO_free(b);
    err_clear(&err);
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), -EINVAL);
    assert_non_null(strstr(err.msg, "does not match"));
    assert_served(ctx, "a.example.com", &c_a2, "a.example.com");

    /* Files removed: -ENOENT, still serving. */
    char *crt = tpath("r.crt");
    assert_int_equal(unlink(crt), 0);
    err_clear(&err);
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "r.crt"));
    assert_served(ctx, "a.example.com", &c_a2, "a.example.com");
    free(crt);

    /* Fixed: picked up. */
    install("r", &c_a);
    assert_int_equal(gw_tls_ctx_reload(ctx, &err), 0);
    assert_served(ctx, "a.example.com", &c_a, "a.example.com");

    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* Handshakes on two threads while the main thread swaps the certificate
 * back and forth: every handshake gets one of the two, and ASan sees no
 * use of a retired SSL_CTX. */
typedef struct worker {
    gw_tls_ctx_t *ctx;
    atomic_bool *stop;
    int ok, bad, seen_a, seen_a2;
} worker_t;

static void *worker_run(void *arg)
{
    worker_t *w = arg;
    while (!atomic_load(w->stop) || w->ok < 20) {
        pair_t p;
        pair_open(&p, w->ctx, "a.example.com", (w->ok & 1) ? TLS1_2_VERSION : TLS1_3_VERSION);
        if (handshake(&p) == 0 && (peer_is(&p, &c_a) || peer_is(&p, &c_a2))) {
            w->ok++;
            w->seen_a += peer_is(&p, &c_a);
            w->seen_a2 += peer_is(&p, &c_a2);
        } else {
            w->bad++;
        }
        pair_close(&p);
    }
    ERR_clear_error();
    OPENSSL_thread_stop(); /* per-thread error state, for LeakSanitizer */
    return NULL;
}

static void test_reload_concurrent(void **state)
{
    (void)state;
    install("cc", &c_a);
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "cc");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    atomic_bool stop = false;
    worker_t w[2] = {{ctx, &stop, 0, 0, 0, 0}, {ctx, &stop, 0, 0, 0, 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, worker_run, &w[i]), 0);
    int reloads = 0;
    for (int i = 0; i < 60; i++) {
        install("cc", (i & 1) ? &c_a : &c_a2);
        err_t err = {0};
        if (gw_tls_ctx_reload(ctx, &err) != 0)
            fail_msg("reload: %s", err.msg);
        reloads++;
        usleep(2000);
    }
    atomic_store(&stop, true);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(reloads, 60);
    for (int i = 0; i < 2; i++) {
        assert_int_equal(w[i].bad, 0);
        assert_true(w[i].ok >= 20);
    }
    assert_true(w[0].seen_a + w[1].seen_a > 0);
    assert_true(w[0].seen_a2 + w[1].seen_a2 > 0);
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* ---- resumption -------------------------------------------------------------- */

/* Session tickets are on, for both versions, and survive a certificate
 * reload (the ticket keys are not the certificate's). */
static void test_resumption(void **state)
{
    (void)state;
    install("res", &c_a);
    cin_t ci = {0};
    cin_add(&ci, "a.example.com", "res");
    gw_tls_ctx_t *ctx = ctx_of(&ci);
    for (int v = 0; v < 2; v++) {
        int version = v ? TLS1_3_VERSION : TLS1_2_VERSION;
        pair_t p;
        pair_open(&p, ctx, "a.example.com", version);
        assert_int_equal(handshake(&p), 0);
        assert_int_equal(gw_tls_write(p.s, "hi", 2), 0);
        char back[4];
        assert_int_equal(client_read(&p, back, sizeof back), 2); /* TLS 1.3 tickets arrive */
        /* A clean close: OpenSSL marks a session not resumable when its
         * connection is dropped without close_notify. */
        assert_true(SSL_shutdown(p.cl) >= 0);
        pump(&p);
        assert_int_equal(p.srv_rc, -EPIPE);
        SSL_SESSION *sess = SSL_get1_session(p.cl);
        assert_non_null(sess);
        assert_true(SSL_SESSION_is_resumable(sess));
        pair_close(&p);

        install("res", v ? &c_a : &c_a2);
        assert_int_equal(gw_tls_ctx_reload(ctx, NULL), 0);

        pair_open_ex(&p, ctx, "a.example.com", version, sess);
        assert_int_equal(handshake(&p), 0);
        if (!SSL_session_reused(p.cl))
            fail_msg("not reused on v=%d", v);
        client_write(&p, "again", 5);
        assert_int_equal(p.got.len, 5);
        pair_close(&p);
        SSL_SESSION_free(sess);
    }
    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

/* ---- hostile and broken input -------------------------------------------------- */

static gw_tls_conn_t *feed_expect_eproto(gw_tls_ctx_t *ctx, const void *data, size_t n,
                                         const char *why)
{
    gw_tls_conn_t *c = gw_tls_conn_new(ctx);
    int rc = gw_tls_feed(c, data, n);
    if (rc == 0) {
        char tmp[64];
        rc = (int)gw_tls_read(c, tmp, sizeof tmp);
    }
    assert_int_equal(rc, -EPROTO);
    assert_non_null(gw_tls_error(c));
    if (why && !strstr(gw_tls_error(c), why))
        fail_msg("error '%s' does not say '%s'", gw_tls_error(c), why);
    /* dead for good */
    assert_int_equal(gw_tls_feed(c, "x", 1), -EPROTO);
    char tmp[8];
    assert_int_equal(gw_tls_read(c, tmp, sizeof tmp), -EPROTO);
    assert_int_equal(gw_tls_write(c, "x", 1), -EPROTO);
    gw_tls_shutdown(c);
    return c;
}

static void test_garbage(void **state)
{
    (void)state;
    cin_t ci = {0};
    cin_add(&ci, NULL, "def");
    gw_tls_ctx_t *ctx = ctx_of(&ci);

    const char http[] = "GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    gw_tls_conn_free(feed_expect_eproto(ctx, http, sizeof http - 1, "plain HTTP"));

    char zeros[64] = {0};
    gw_tls_conn_free(feed_expect_eproto(ctx, zeros, sizeof zeros, "handshake failed"));

    /* A handshake record whose body is junk: the alert goes back. */
    unsigned char rec[64] = {0x16, 0x03, 0x01, 0x00, 59, 0x01, 0x00, 0x00, 55};
    for (size_t i = 9; i < sizeof rec; i++)
        rec[i] = (unsigned char)(i * 37);
    gw_tls_conn_t *c = feed_expect_eproto(ctx, rec, sizeof rec, "handshake failed");
    size_t len;
    const unsigned char *o = gw_tls_out(c, &len);
    assert_non_null(o);
    assert_int_equal(o[0], 0x15); /* an alert record */
    gw_tls_conn_free(c);

    /* Random bytes of many lengths, fed in pieces. */
    srand(1);
    for (int round = 0; round < 200; round++) {
        c = gw_tls_conn_new(ctx);
        unsigned char junk[600];
        size_t n = (size_t)(rand() % (int)sizeof junk);
        for (size_t i = 0; i < n; i++)
            junk[i] = (unsigned char)rand();
        if (round & 1) {
            junk[0] = 0x16; /* look like a handshake record */
            if (n > 2)
                junk[1] = 3;
        }
        for (size_t off = 0; off < n;) {
            size_t k = 1 + (size_t)(rand() % 64);
            if (k > n - off)
                k = n - off;
            int rc = gw_tls_feed(c, junk + off, k);
            char tmp[256];
            ssize_t r = gw_tls_read(c, tmp, sizeof tmp);
            assert_true(rc == 0 || rc == -EPROTO);
            assert_true(r == 0 || r == -EPROTO);
            if (rc < 0 || r < 0) {
                assert_non_null(gw_tls_error(c));
                break;
            }
            off += k;
        }
        assert_false(gw_tls_handshake_done(c));
        gw_tls_conn_free(c);
    }

    /* An old protocol is refused with a clear reason. */
    pair_t p;
    pair_open(&p, ctx, NULL, TLS1_1_VERSION);
    assert_int_equal(handshake(&p), -EPROTO);
    assert_non_null(strstr(gw_tls_error(p.s), "unsupported protocol"));
    pair_close(&p);

    /* Only weak TLS 1.2 suites offered: no shared cipher. */
    pair_open(&p, ctx, NULL, TLS1_2_VERSION);
    assert_int_equal(SSL_set_cipher_list(p.cl, "AES128-SHA"), 1);
    assert_int_equal(handshake(&p), -EPROTO);
    assert_non_null(strstr(gw_tls_error(p.s), "no shared cipher"));
    pair_close(&p);

    /* Tampered application data after a good handshake. */
    pair_open(&p, ctx, NULL, TLS1_3_VERSION);
    assert_int_equal(handshake(&p), 0);
    assert_int_equal(SSL_write(p.cl, "secret", 6), 6);
    char buf[256];
    int n = BIO_read(p.cout, buf, sizeof buf);
    assert_true(n > 10);
    buf[n - 3] ^= 1;
    assert_int_equal(gw_tls_feed(p.s, buf, (size_t)n), 0);
    char tmp[16];
    assert_int_equal(gw_tls_read(p.s, tmp, sizeof tmp), -EPROTO);
    assert_non_null(strstr(gw_tls_error(p.s), "read"));
    pair_close(&p);

    gw_tls_ctx_free(ctx);
    cin_free(&ci);
}

int main(void)
{
    log_setup(getenv("TEST_DEBUG") ? LOG_DEBUG : LOG_OFF, LOG_TEXT);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_tls13),
        cmocka_unit_test(test_echo_tls12),
        cmocka_unit_test(test_echo_tls12_rsa),
        cmocka_unit_test(test_byte_at_a_time),
        cmocka_unit_test(test_large_transfer_and_bounds),
        cmocka_unit_test(test_out_run_is_stable),
        cmocka_unit_test(test_write_before_handshake),
        cmocka_unit_test(test_shutdown),
        cmocka_unit_test(test_sni_selection),
        cmocka_unit_test(test_host_covered),
        cmocka_unit_test(test_ctx_errors),
        cmocka_unit_test(test_reload),
        cmocka_unit_test(test_reload_concurrent),
        cmocka_unit_test(test_resumption),
        cmocka_unit_test(test_garbage),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
