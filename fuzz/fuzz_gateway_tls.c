/* Fuzz the gateway's TLS server side with what a hostile client can send
 * first: ClientHellos (SNI, ALPN, versions, suites, key shares, extensions
 * in any shape) and whatever follows, through gw_tls_feed / gw_tls_read /
 * gw_tls_out exactly as the proxy drives a connection. The context has an
 * exact host, a wildcard and a default, so the SNI and ALPN callbacks run.
 *
 * Input: the first byte picks the size of the pieces the rest arrives in
 * (1..64, or all at once) and whether the server also writes plaintext and
 * shuts down; the rest is the client's bytes. Seeds are real ClientHellos
 * (TLS 1.2 and 1.3, with and without SNI and ALPN). */
#include "core/log.h"
#include "gateway/tls.h"

#include <errno.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

static gw_tls_ctx_t *ctx;

/* A self-signed EC certificate for cn, written to dir/name.{crt,key}. */
static void make_cert(const char *dir, const char *name, const char *cn, gw_tls_cert_in_t *out)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    X509 *x = X509_new();
    if (!k || !x)
        abort();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, k);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, nm);
    if (X509_sign(x, k, EVP_sha256()) <= 0)
        abort();
    char crt[256], key[256];
    snprintf(crt, sizeof crt, "%s/%s.crt", dir, name);
    snprintf(key, sizeof key, "%s/%s.key", dir, name);
    FILE *f = fopen(crt, "w");
    if (!f || PEM_write_X509(f, x) != 1 || fclose(f) != 0)
        abort();
    f = fopen(key, "w");
    if (!f || PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) != 1 || fclose(f) != 0)
        abort();
    out->cert_file = strdup(crt);
    out->key_file = strdup(key);
    X509_free(x);
    EVP_PKEY_free(k);
}

static void setup(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    char dir[] = "/tmp/fuzz-gw-tls-XXXXXX";
    if (!mkdtemp(dir))
        abort();
    gw_tls_cert_in_t in[3] = {{.host = "a.example.com"}, {.host = "*.example.com"}, {.host = ""}};
    make_cert(dir, "a", "a.example.com", &in[0]);
    make_cert(dir, "w", "*.example.com", &in[1]);
    make_cert(dir, "d", "default.test", &in[2]);
    err_t err = {0};
    if (gw_tls_ctx_new(in, 3, &ctx, &err) != 0) {
        fprintf(stderr, "gw_tls_ctx_new: %s\n", err.msg);
        abort();
    }
    /* Loaded: the files are not needed any more. */
    for (int i = 0; i < 3; i++) {
        unlink(in[i].cert_file);
        unlink(in[i].key_file);
        free((char *)in[i].cert_file);
        free((char *)in[i].key_file);
    }
    rmdir(dir);
}

static void drain_out(gw_tls_conn_t *c)
{
    size_t len;
    const void *o;
    while ((o = gw_tls_out(c, &len))) {
        /* Touch every byte: ASan checks the run is really there. */
        volatile unsigned char sum = 0;
        for (size_t i = 0; i < len; i++)
            sum ^= ((const unsigned char *)o)[i];
        gw_tls_out_consume(c, len);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!ctx)
        setup();
    if (size < 1)
        return 0;
    unsigned mode = data[0];
    data++;
    size--;
    size_t piece = (mode & 0x3f) ? (mode & 0x3f) : size ? size : 1;
    bool writes = mode & 0x40, shut = mode & 0x80;

    gw_tls_conn_t *c = gw_tls_conn_new(ctx);
    if (writes)
        (void)gw_tls_write(c, "early", 5);
    for (size_t off = 0; off < size;) {
        size_t k = size - off < piece ? size - off : piece;
        int rc = gw_tls_feed(c, data + off, k);
        off += k;
        char plain[512];
        ssize_t r = 0;
        while (rc == 0 && (r = gw_tls_read(c, plain, sizeof plain)) > 0)
            if (writes)
                (void)gw_tls_write(c, plain, (size_t)r);
        if ((rc < 0 || r < 0) && !gw_tls_error(c) && rc != -EPIPE && r != -EPIPE && rc != -ENOBUFS)
            abort(); /* a failure always says why */
        const char *sni = gw_tls_sni(c);
        if (sni && (strlen(sni) == 0 || strlen(sni) > 253 ||
                    strspn(sni, "abcdefghijklmnopqrstuvwxyz0123456789-_.") != strlen(sni)))
            abort(); /* the proxy may log or route on it: only host name bytes */
        drain_out(c);
        if (rc < 0 || r < 0)
            break;
    }
    if (shut)
        gw_tls_shutdown(c);
    drain_out(c);
    if (gw_tls_pending(c) != 0)
        abort();
    gw_tls_conn_free(c);
    return 0;
}
