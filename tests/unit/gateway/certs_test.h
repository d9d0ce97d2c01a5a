/* Certificates for the gateway's TLS tests (static, header-only): a CA
 * made at setup, leaves it signs, and files written into a temp dir the
 * way certificate tooling writes them, so tests verify chains for real and
 * no key material is committed. */
#ifndef DROVER_TEST_GATEWAY_CERTS_H
#define DROVER_TEST_GATEWAY_CERTS_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include "core/alloc.h"

#include <dirent.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>

typedef struct cert {
    EVP_PKEY *key;
    X509 *crt;
} cert_t;

static char tmpdir[64];
static long next_serial = 1;
/* The CA that signs every leaf; the first make_cert makes it. */
static cert_t ca;

static inline char *tpath(const char *name)
{
    return xasprintf("%s/%s", tmpdir, name);
}

static inline void add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
    X509V3_CTX v3;
    X509V3_set_ctx_nodb(&v3);
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, &v3, nid, value);
    assert_non_null(ext);
    assert_int_equal(X509_add_ext(x, ext, -1), 1);
    X509_EXTENSION_free(ext);
}

/* A certificate for cn with the SANs given ("DNS:a,DNS:b"), signed by the
 * CA (or self-signed while ca is unset: that makes the CA). EC P-256, or
 * RSA 2048; days < 0 makes it expired. */
static inline cert_t make_cert(const char *cn, const char *san, bool rsa, int days)
{
    cert_t c;
    c.key = rsa ? EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)2048)
                : EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(c.key);
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), next_serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), days < 0 ? -2 * 86400L : -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400L);
    X509_set_pubkey(x, c.key);
    X509_NAME *nm = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(nm, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    bool is_ca = ca.crt == NULL;
    X509_set_issuer_name(x, is_ca ? nm : X509_get_subject_name(ca.crt));
    if (is_ca) {
        add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, ca.crt, NID_basic_constraints, "CA:FALSE");
        if (san)
            add_ext(x, ca.crt, NID_subject_alt_name, san);
    }
    assert_true(X509_sign(x, is_ca ? c.key : ca.key, EVP_sha256()) > 0);
    c.crt = x;
    return c;
}

static inline void cert_free(cert_t *c)
{
    EVP_PKEY_free(c->key);
    X509_free(c->crt);
    c->key = NULL;
    c->crt = NULL;
}

/* Write through a temp file and rename, as certificate tooling does, so a
 * reload never sees half a file. */
static inline void write_file(const char *name, const char *text, size_t len)
{
    char *p = tpath(name);
    char *t = xasprintf("%s.tmp", p);
    FILE *f = fopen(t, "w");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    assert_int_equal(rename(t, p), 0);
    free(t);
    free(p);
}

/* <name>.crt (leaf + CA, a real chain) and <name>.key. */
static inline void install(const char *name, const cert_t *c)
{
    BIO *b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_X509(b, c->crt), 1);
    assert_int_equal(PEM_write_bio_X509(b, ca.crt), 1);
    char *data;
    long n = BIO_get_mem_data(b, &data);
    char *fn = xasprintf("%s.crt", name);
    write_file(fn, data, (size_t)n);
    free(fn);
    BIO_free(b);
    b = BIO_new(BIO_s_mem());
    assert_int_equal(PEM_write_bio_PrivateKey(b, c->key, NULL, NULL, 0, NULL, NULL), 1);
    n = BIO_get_mem_data(b, &data);
    fn = xasprintf("%s.key", name);
    write_file(fn, data, (size_t)n);
    free(fn);
    BIO_free(b);
}

/* mkdtemp under /tmp with the given prefix into tmpdir; -1 on failure. */
static inline int certs_dir_make(const char *prefix)
{
    snprintf(tmpdir, sizeof tmpdir, "/tmp/%s-XXXXXX", prefix);
    return mkdtemp(tmpdir) ? 0 : -1;
}

/* Remove tmpdir and the files in it. */
static inline void certs_dir_remove(void)
{
    DIR *d = opendir(tmpdir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            char *p = tpath(e->d_name);
            unlink(p);
            free(p);
        }
        closedir(d);
    }
    rmdir(tmpdir);
}

#endif
