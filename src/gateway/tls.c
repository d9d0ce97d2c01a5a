/* gateway/tls: TLS termination over caller-driven buffers (see tls.h).
 *
 * Shape. Every connection starts on the context's `base` SSL_CTX, which has
 * no certificate: it carries the protocol settings, the session ticket keys
 * and the SNI callback. The callback moves the connection onto the chosen
 * host's SSL_CTX (SSL_set_SSL_CTX takes a reference), which is all a host's
 * SSL_CTX is for: its certificate and key. Because tickets are issued and
 * decrypted with the session context (always `base`), reloading a host's
 * certificate never invalidates tickets.
 *
 * Reload without locks on the handshake path. A host's current SSL_CTX is an
 * atomic pointer. The SNI callback reads it and takes its reference inside
 * a read-side section marked by two counters (one per epoch parity); the
 * reloader swaps the pointer, then waits until every section that could have
 * seen the old pointer has left (flipping the epoch twice so that readers
 * arriving meanwhile count on the other parity and cannot starve it), then
 * drops its own reference. Connections hold their own references, so the
 * old certificate lives exactly as long as the last connection using it.
 *
 * I/O. The SSL object reads and writes through a small BIO of ours backed
 * by drover's bounded buffers rather than OpenSSL's memory BIO: we get hard
 * bounds, an output run that never moves while an asynchronous write uses
 * it (two buffers: one being sent, one being filled), and buffers that are
 * freed when empty so 10k idle keep-alive connections cost almost nothing
 * (with SSL_MODE_RELEASE_BUFFERS OpenSSL does the same for its own). */
#include "gateway/tls.h"

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

/* TLS 1.2: ECDHE with AEAD only (forward secrecy, no CBC padding oracles),
 * Mozilla's "intermediate" set without DHE. TLS 1.3's suites are all AEAD. */
#define TLS12_CIPHERS                                                                              \
    "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"                                   \
    "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"                                   \
    "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305"
#define TLS13_SUITES "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256"

/* One session id context for every SSL_CTX: SSL_set_SSL_CTX copies it, and a
 * ticket must resume whichever host context the connection moved to. */
static const unsigned char SID_CTX[] = "drover-gateway";

/* ALPN wire format: length-prefixed protocol names. */
static const unsigned char ALPN_PROTOS[] = "\x08http/1.1";

#define HOST_MAX 253
/* Ciphertext a single BIO write may leave behind is bounded by what
 * gw_tls_write admits plus record overhead, a handshake flight and alerts;
 * this hard bound only catches a bug (the connection fails, nothing grows). */
#define OUT_HARD_MAX (2 * GW_TLS_OUT_MAX + 64u * 1024)
/* Plaintext per SSL_write call: one full record, so a large write cannot
 * produce one huge burst without the bound being checked in between. */
#define WRITE_CHUNK 16384

typedef struct file_sig {
    int errnum; /* stat's errno, 0 when the file was there */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
} file_sig_t;

typedef struct tls_host {
    char *host; /* lowercase; "" for the default; "*.example.com" for a wildcard */
    bool wild;
    char *cert_file, *key_file;
    _Atomic(SSL_CTX *) cur;       /* what new handshakes get; read by any thread */
    file_sig_t cert_sig, key_sig; /* files `cur` was loaded from */
    bool bad;                     /* the files' current version failed to load... */
    file_sig_t bad_cert, bad_key; /* ...this version (so it is logged once) */
    err_t bad_err;
} tls_host_t;

struct gw_tls_ctx {
    SSL_CTX *base;
    tls_host_t *hosts;
    size_t n;
    size_t def; /* index of the default host */
    pthread_mutex_t reload_mu;
    atomic_uint epoch;
    atomic_ulong readers[2];
};

struct gw_tls_conn {
    gw_tls_ctx_t *ctx;
    SSL *ssl;
    buf_t in; /* ciphertext fed, from in_off on not yet read by OpenSSL */
    size_t in_off;
    buf_t send; /* ciphertext handed out by gw_tls_out, from send_off on unsent */
    size_t send_off;
    buf_t fill;  /* ciphertext produced since; becomes `send` once that is sent */
    buf_t plain; /* plaintext written before the handshake finished */
    bool done, failed, peer_closed, shut, overflow;
    char *sni;
    size_t host; /* index of the host whose certificate the handshake chose */
    char err[192];
};

/* ---- small helpers ------------------------------------------------------------ */

/* OpenSSL only returns NULL from constructors when it is out of memory; like
 * xmalloc, that is not recoverable in a useful way. */
static void *ossl_check(void *p, const char *what)
{
    if (!p) {
        log_error("gateway", "tls: %s: out of memory", what);
        abort();
    }
    return p;
}

/* OpenSSL's reason for the failure just seen, then an empty queue (the
 * queue is per thread and SSL_get_error reads it: leftovers would be
 * blamed on the next connection this thread serves). The earliest entry is
 * the specific one ("no start line"); later ones are the layers that
 * passed it up ("PEM lib"). *code gets that entry (0 when none). */
static const char *ossl_reason(char *tmp, size_t cap, unsigned long *code)
{
    unsigned long e = ERR_peek_error();
    if (code)
        *code = e;
    const char *r = e ? ERR_reason_error_string(e) : NULL;
    if (r)
        snprintf(tmp, cap, "%s", r);
    else if (e)
        ERR_error_string_n(e, tmp, cap);
    else
        snprintf(tmp, cap, "unknown OpenSSL error");
    ERR_clear_error();
    return tmp;
}

static void file_sig_get(const char *path, file_sig_t *s)
{
    struct stat st;
    memset(s, 0, sizeof *s);
    if (stat(path, &st) != 0) {
        s->errnum = errno ? errno : EIO;
        return;
    }
    s->dev = st.st_dev;
    s->ino = st.st_ino;
    s->size = st.st_size;
    s->mtime = st.st_mtim;
}

static bool file_sig_eq(const file_sig_t *a, const file_sig_t *b)
{
    return a->errnum == b->errnum && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Host names of the configuration: lowercase, one trailing dot dropped,
 * letters/digits/'-'/'_' labels separated by single dots, and a wildcard
 * only as a whole leading label ("*.example.com"), as certificates allow. */
static int host_normalize(const char *in, char **out, bool *wild)
{
    size_t len = in ? strlen(in) : 0;
    if (len && in[len - 1] == '.')
        len--;
    *wild = false;
    *out = NULL;
    if (len == 0)
        return 0; /* the default */
    if (len > HOST_MAX)
        return -EINVAL;
    char *h = xstrndup(in, len);
    size_t start = 0;
    if (len >= 2 && h[0] == '*' && h[1] == '.') {
        *wild = true;
        start = 2;
    }
    bool label_empty = true;
    for (size_t i = start; i < len; i++) {
        unsigned char ch = (unsigned char)h[i];
        if (ch == '.') {
            if (label_empty)
                goto bad;
            label_empty = true;
            continue;
        }
        if (!isalnum(ch) && ch != '-' && ch != '_')
            goto bad;
        h[i] = (char)tolower(ch);
        label_empty = false;
    }
    if (label_empty)
        goto bad;
    *out = h;
    return 0;
bad:
    free(h);
    return -EINVAL;
}

/* ---- SSL_CTX setup ------------------------------------------------------------- */

/* Never prompt: OpenSSL's default passphrase callback reads the terminal,
 * which would hang a daemon. An encrypted key simply fails to load. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return 0;
}

/* Only http/1.1 is spoken. A client offering no common protocol still gets
 * a connection without ALPN (NOACK) rather than a fatal alert: an HTTP/1.1
 * answer to what it sends is more useful than a handshake failure. */
static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl, (void)arg;
    unsigned char *sel = NULL;
    if (SSL_select_next_proto(&sel, outlen, ALPN_PROTOS, sizeof ALPN_PROTOS - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

/* Every SSL_CTX gets the same protocol settings: a connection starts on
 * `base` and some settings are read from the context it moved to (ALPN's
 * callback is read from the current one, not the session's). */
static SSL_CTX *ssl_ctx_new(void)
{
    SSL_CTX *sc = ossl_check(SSL_CTX_new(TLS_server_method()), "SSL_CTX_new");
    SSL_CTX_set_min_proto_version(sc, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(sc, TLS1_3_VERSION);
    /* Renegotiation only lets a client make the server redo expensive key
     * exchanges on one connection; HTTP/1.1 has no use for it. Every suite
     * is strong, so the client's order (e.g. ChaCha20 on CPUs without AES
     * instructions) is the better one: no server preference. */
    SSL_CTX_set_options(sc, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION);
    if (SSL_CTX_set_cipher_list(sc, TLS12_CIPHERS) != 1 ||
        SSL_CTX_set_ciphersuites(sc, TLS13_SUITES) != 1) {
        char tmp[128];
        log_error("gateway", "tls: cipher configuration rejected: %s",
                  ossl_reason(tmp, sizeof tmp, NULL));
        abort(); /* constant strings: only a broken OpenSSL build gets here */
    }
    SSL_CTX_set_mode(sc, SSL_MODE_RELEASE_BUFFERS);
    /* Resumption goes through stateless tickets (not disabled), so no
     * server-side session cache: it would be a lock shared by all threads and
     * memory that grows with clients. */
    SSL_CTX_set_session_cache_mode(sc, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_session_id_context(sc, SID_CTX, sizeof SID_CTX - 1);
    SSL_CTX_set_alpn_select_cb(sc, on_alpn, NULL);
    SSL_CTX_set_default_passwd_cb(sc, no_passphrase);
    return sc;
}

/* Warnings only: an expired certificate or one not naming its host is
 * still served (the operator may be mid-rotation), but should be seen. */
static void host_cert_check(const tls_host_t *h, SSL_CTX *sc)
{
    X509 *x = SSL_CTX_get0_certificate(sc);
    if (!x)
        return;
    if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0)
        log_warn("gateway", "tls: certificate %s (host %s) has expired", h->cert_file,
                 h->host[0] ? h->host : "default");
    if (h->host[0]) {
        /* A wildcard entry is checked with a name it must cover. */
        char *probe = h->wild ? xasprintf("x%s", h->host + 1) : xstrdup(h->host);
        if (X509_check_host(x, probe, 0, 0, NULL) != 1)
            log_warn("gateway", "tls: certificate %s does not name %s", h->cert_file, h->host);
        free(probe);
    }
}

/* Load a host's files into a fresh SSL_CTX. The files are stat'ed before
 * (sigs) so a change during the load is simply seen again next reload. */
static int host_load(tls_host_t *h, SSL_CTX **out, file_sig_t *cert_sig, file_sig_t *key_sig,
                     err_t *err)
{
    const char *who = h->host[0] ? h->host : "default";
    char tmp[160];
    file_sig_get(h->cert_file, cert_sig);
    file_sig_get(h->key_file, key_sig);
    if (cert_sig->errnum)
        return err_set(err, -cert_sig->errnum, "tls host %s: certificate %s: %s", who, h->cert_file,
                       strerror(cert_sig->errnum));
    if (key_sig->errnum)
        return err_set(err, -key_sig->errnum, "tls host %s: key %s: %s", who, h->key_file,
                       strerror(key_sig->errnum));
    SSL_CTX *sc = ssl_ctx_new();
    int rc = 0;
    ERR_clear_error();
    unsigned long code;
    if (SSL_CTX_use_certificate_chain_file(sc, h->cert_file) != 1) {
        rc = err_set(err, -EINVAL, "tls host %s: certificate %s: %s", who, h->cert_file,
                     ossl_reason(tmp, sizeof tmp, NULL));
        goto out;
    }
    /* The key is checked against the certificate as it is set: a key left
     * over from before a certificate was replaced fails here. */
    if (SSL_CTX_use_PrivateKey_file(sc, h->key_file, SSL_FILETYPE_PEM) != 1 ||
        SSL_CTX_check_private_key(sc) != 1) {
        const char *why = ossl_reason(tmp, sizeof tmp, &code);
        if (ERR_GET_LIB(code) == ERR_LIB_X509 && ERR_GET_REASON(code) == X509_R_KEY_VALUES_MISMATCH)
            rc = err_set(err, -EINVAL, "tls host %s: key %s does not match certificate %s", who,
                         h->key_file, h->cert_file);
        else
            rc = err_set(err, -EINVAL, "tls host %s: key %s: %s", who, h->key_file, why);
        goto out;
    }
    host_cert_check(h, sc);
out:
    if (rc) {
        SSL_CTX_free(sc);
        return rc;
    }
    *out = sc;
    return 0;
}

/* ---- the read-side sections (RCU-like) ------------------------------------------- */

static unsigned rcu_enter(gw_tls_ctx_t *x)
{
    unsigned e = atomic_load(&x->epoch) & 1u;
    atomic_fetch_add(&x->readers[e], 1);
    return e;
}

static void rcu_exit(gw_tls_ctx_t *x, unsigned e)
{
    atomic_fetch_sub(&x->readers[e], 1);
}

/* Wait until no section that began before this call is still running. Both
 * parities are drained, each right after moving new readers to the other
 * one: a reader that read the epoch long ago may count on either parity,
 * but it counted before it loaded the pointer, so draining both covers it.
 * Sections are a few hundred instructions, so yielding is enough. */
static void rcu_synchronize(gw_tls_ctx_t *x)
{
    for (int i = 0; i < 2; i++) {
        unsigned e = atomic_fetch_add(&x->epoch, 1) & 1u;
        while (atomic_load(&x->readers[e]) != 0)
            sched_yield();
    }
}

/* ---- SNI ------------------------------------------------------------------------ */

/* Exact name, then a wildcard covering exactly one more label (what the
 * certificate can prove; a deeper name gets the default), then the default.
 * A linear scan: a handful of hosts costs nothing next to a handshake. */
static size_t host_pick(const gw_tls_ctx_t *x, const char *sni)
{
    if (sni) {
        for (size_t i = 0; i < x->n; i++)
            if (!x->hosts[i].wild && x->hosts[i].host[0] && strcmp(x->hosts[i].host, sni) == 0)
                return i;
        const char *dot = strchr(sni, '.');
        if (dot && dot != sni && dot[1])
            for (size_t i = 0; i < x->n; i++)
                if (x->hosts[i].wild && strcmp(x->hosts[i].host + 1, dot) == 0)
                    return i;
    }
    return x->def;
}

/* The client's server name as we keep it: lowercase without the trailing
 * dot; a name with bytes no host name has is treated as absent (it can
 * match nothing, and the proxy may log or route on what we return). */
static char *sni_normalize(const char *name)
{
    if (!name)
        return NULL;
    size_t len = strlen(name);
    if (len && name[len - 1] == '.')
        len--;
    if (len == 0 || len > HOST_MAX)
        return NULL;
    char *s = xstrndup(name, len);
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (!isalnum(ch) && ch != '-' && ch != '_' && ch != '.') {
            free(s);
            return NULL;
        }
        s[i] = (char)tolower(ch);
    }
    return s;
}

/* Runs during every ClientHello (with or without SNI): move the connection
 * onto the chosen host's current SSL_CTX. SSL_set_SSL_CTX takes its own
 * reference, inside the read-side section, so a reload may drop the old
 * pointer's reference the moment the section ends. */
static int on_servername(SSL *ssl, int *alert, void *arg)
{
    gw_tls_ctx_t *x = arg;
    gw_tls_conn_t *c = SSL_get_app_data(ssl);
    free(c->sni);
    c->sni = sni_normalize(SSL_get_servername(ssl, TLSEXT_NAMETYPE_host_name));
    c->host = host_pick(x, c->sni);
    tls_host_t *h = &x->hosts[c->host];
    unsigned e = rcu_enter(x);
    SSL_CTX *sc = atomic_load(&h->cur);
    SSL_CTX *set = SSL_set_SSL_CTX(ssl, sc);
    rcu_exit(x, e);
    if (!set) {
        *alert = SSL_AD_INTERNAL_ERROR;
        return SSL_TLSEXT_ERR_ALERT_FATAL;
    }
    return SSL_TLSEXT_ERR_OK;
}

/* ---- context -------------------------------------------------------------------- */

static void host_clear(tls_host_t *h)
{
    SSL_CTX_free(atomic_load(&h->cur));
    free(h->host);
    free(h->cert_file);
    free(h->key_file);
}

void gw_tls_ctx_free(gw_tls_ctx_t *x)
{
    if (!x)
        return;
    for (size_t i = 0; i < x->n; i++)
        host_clear(&x->hosts[i]);
    free(x->hosts);
    SSL_CTX_free(x->base);
    pthread_mutex_destroy(&x->reload_mu);
    free(x);
}

int gw_tls_ctx_new(const gw_tls_cert_in_t *certs, size_t n, gw_tls_ctx_t **out, err_t *err)
{
    *out = NULL;
    if (n == 0)
        return err_set(err, -EINVAL, "tls: no certificates");
    gw_tls_ctx_t *x = xcalloc(1, sizeof *x);
    pthread_mutex_init(&x->reload_mu, NULL);
    x->hosts = xcalloc(n, sizeof *x->hosts);
    x->base = ssl_ctx_new();
    SSL_CTX_set_tlsext_servername_callback(x->base, on_servername);
    SSL_CTX_set_tlsext_servername_arg(x->base, x);
    bool have_def = false;
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        const gw_tls_cert_in_t *in = &certs[i];
        tls_host_t *h = &x->hosts[i];
        if (!in->cert_file || !in->cert_file[0] || !in->key_file || !in->key_file[0]) {
            rc = err_set(err, -EINVAL, "tls host %s: certificate and key files are required",
                         in->host && in->host[0] ? in->host : "default");
            goto fail;
        }
        if (host_normalize(in->host, &h->host, &h->wild) < 0) {
            rc = err_set(err, -EINVAL, "tls host '%s': not a host name or *.wildcard", in->host);
            goto fail;
        }
        if (!h->host)
            h->host = xstrdup("");
        h->cert_file = xstrdup(in->cert_file);
        h->key_file = xstrdup(in->key_file);
        x->n = i + 1; /* from here on host_clear() frees it */
        for (size_t j = 0; j < i; j++)
            if (strcmp(x->hosts[j].host, h->host) == 0) {
                rc = err_set(err, -EINVAL, "tls host %s: listed twice",
                             h->host[0] ? h->host : "default");
                goto fail;
            }
        if (!h->host[0]) {
            x->def = i;
            have_def = true;
        }
        SSL_CTX *sc = NULL;
        rc = host_load(h, &sc, &h->cert_sig, &h->key_sig, err);
        if (rc)
            goto fail;
        atomic_store(&h->cur, sc);
    }
    if (!have_def)
        x->def = 0;
    *out = x;
    return 0;
fail:
    gw_tls_ctx_free(x);
    return rc;
}

/* A host whose files changed gets a fresh SSL_CTX, published with one
 * atomic swap; the failure of a version of its files is logged once (a
 * periodic reload would otherwise repeat it) but reported every time. */
int gw_tls_ctx_reload(gw_tls_ctx_t *x, err_t *err)
{
    int first = 0;
    pthread_mutex_lock(&x->reload_mu);
    for (size_t i = 0; i < x->n; i++) {
        tls_host_t *h = &x->hosts[i];
        const char *who = h->host[0] ? h->host : "default";
        file_sig_t cs, ks;
        file_sig_get(h->cert_file, &cs);
        file_sig_get(h->key_file, &ks);
        if (file_sig_eq(&cs, &h->cert_sig) && file_sig_eq(&ks, &h->key_sig))
            continue;
        err_t e = {0};
        int rc;
        if (h->bad && file_sig_eq(&cs, &h->bad_cert) && file_sig_eq(&ks, &h->bad_key)) {
            e = h->bad_err; /* same broken version as last time: already logged */
            rc = e.code;
        } else {
            SSL_CTX *sc = NULL;
            rc = host_load(h, &sc, &cs, &ks, &e);
            if (rc == 0) {
                SSL_CTX *old = atomic_exchange(&h->cur, sc);
                rcu_synchronize(x);
                SSL_CTX_free(old); /* connections on it hold their own references */
                h->cert_sig = cs;
                h->key_sig = ks;
                h->bad = false;
                log_info("gateway", "tls: host %s: reloaded certificate %s", who, h->cert_file);
                continue;
            }
            log_warn("gateway", "%s (keeping the certificate loaded before)", e.msg);
            h->bad = true;
            h->bad_cert = cs;
            h->bad_key = ks;
            h->bad_err = e;
        }
        if (!first) {
            first = rc;
            if (err)
                *err = e;
        }
    }
    pthread_mutex_unlock(&x->reload_mu);
    return first;
}

/* ---- the BIO between OpenSSL and our buffers -------------------------------------- */

static int bio_write_ex(BIO *b, const char *data, size_t len, size_t *written)
{
    gw_tls_conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (buf_append(&c->fill, data, len) < 0) {
        c->overflow = true; /* a hard error, not "retry": nothing waits on it */
        return 0;
    }
    *written = len;
    return 1;
}

static int bio_read_ex(BIO *b, char *data, size_t len, size_t *readbytes)
{
    gw_tls_conn_t *c = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t avail = c->in.len - c->in_off;
    if (avail == 0) {
        BIO_set_retry_read(b); /* SSL_ERROR_WANT_READ: feed more */
        return 0;
    }
    size_t k = len < avail ? len : avail;
    memcpy(data, c->in.data + c->in_off, k);
    c->in_off += k;
    if (c->in_off == c->in.len) {
        buf_free(&c->in); /* idle connections keep no buffer */
        c->in_off = 0;
    }
    *readbytes = k;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    (void)num, (void)ptr;
    gw_tls_conn_t *c = BIO_get_data(b);
    switch (cmd) {
    case BIO_CTRL_FLUSH: return 1; /* the caller sends; there is nothing to push */
    case BIO_CTRL_PENDING: return (long)(c->in.len - c->in_off);
    case BIO_CTRL_WPENDING: return (long)gw_tls_pending(c);
    default: return 0;
    }
}

static BIO_METHOD *bio_method;
static pthread_once_t bio_once = PTHREAD_ONCE_INIT;

/* One method for the process: BIO type indexes are a small global resource,
 * so it is not made per context. */
static void bio_method_init(void)
{
    BIO_METHOD *m =
        ossl_check(BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "drover gateway tls"),
                   "BIO_meth_new");
    BIO_meth_set_write_ex(m, bio_write_ex);
    BIO_meth_set_read_ex(m, bio_read_ex);
    BIO_meth_set_ctrl(m, bio_ctrl);
    bio_method = m;
}

/* ---- connections ------------------------------------------------------------------ */

gw_tls_conn_t *gw_tls_conn_new(gw_tls_ctx_t *x)
{
    pthread_once(&bio_once, bio_method_init);
    gw_tls_conn_t *c = xcalloc(1, sizeof *c);
    c->ctx = x;
    buf_init(&c->in, GW_TLS_IN_MAX);
    buf_init(&c->send, OUT_HARD_MAX);
    buf_init(&c->fill, OUT_HARD_MAX);
    buf_init(&c->plain, GW_TLS_OUT_MAX);
    c->ssl = ossl_check(SSL_new(x->base), "SSL_new");
    BIO *b = ossl_check(BIO_new(bio_method), "BIO_new");
    BIO_set_data(b, c);
    BIO_set_init(b, 1);
    SSL_set_bio(c->ssl, b, b); /* the SSL owns the BIO */
    SSL_set_app_data(c->ssl, c);
    SSL_set_accept_state(c->ssl);
    return c;
}

void gw_tls_conn_free(gw_tls_conn_t *c)
{
    if (!c)
        return;
    SSL_free(c->ssl);
    buf_free(&c->in);
    buf_free(&c->send);
    buf_free(&c->fill);
    buf_free(&c->plain);
    free(c->sni);
    free(c);
}

/* Record why the connection is dead; every later call reports -EPROTO. A
 * failed handshake is the client's problem (scanners, old clients), so it
 * is logged at debug only; the proxy decides what to count or log. */
static int conn_fail(gw_tls_conn_t *c, const char *stage, int ssl_err)
{
    char tmp[160];
    const char *why;
    unsigned long e = ERR_peek_error();
    if (c->overflow) {
        why = "output buffer full";
        ERR_clear_error();
    } else if (e && ERR_GET_LIB(e) == ERR_LIB_SSL && ERR_GET_REASON(e) == SSL_R_HTTP_REQUEST) {
        why = "plain HTTP sent to the TLS port";
        ERR_clear_error();
    } else if (e) {
        why = ossl_reason(tmp, sizeof tmp, NULL);
    } else {
        snprintf(tmp, sizeof tmp, "OpenSSL error %d without a reason", ssl_err);
        why = tmp;
    }
    snprintf(c->err, sizeof c->err, "%s: %s", stage, why);
    c->failed = true;
    log_debug("gateway", "tls: %s", c->err);
    return -EPROTO;
}

/* Encrypt plaintext into `fill`, one record-sized call at a time. The
 * memory BIO never refuses (bounded by gw_tls_write's check), so SSL_write
 * completes or fails: there is no partial state to resume. */
static int conn_encrypt(gw_tls_conn_t *c, const char *p, size_t n)
{
    while (n > 0) {
        int k = n > WRITE_CHUNK ? WRITE_CHUNK : (int)n;
        ERR_clear_error();
        int r = SSL_write(c->ssl, p, k);
        if (r <= 0)
            return conn_fail(c, "write", SSL_get_error(c->ssl, r));
        p += r;
        n -= (size_t)r;
    }
    return 0;
}

/* Push the handshake as far as the fed bytes allow; once it is done, the
 * plaintext written meanwhile goes out. */
static int conn_handshake(gw_tls_conn_t *c)
{
    if (c->failed)
        return -EPROTO;
    if (c->done)
        return 0;
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r != 1) {
        int e = SSL_get_error(c->ssl, r);
        if (e == SSL_ERROR_WANT_READ && !c->overflow)
            return 0;
        return conn_fail(c, "handshake failed", e);
    }
    c->done = true;
    if (c->plain.len) {
        int rc = conn_encrypt(c, c->plain.data, c->plain.len);
        buf_free(&c->plain);
        if (rc)
            return rc;
    }
    if (c->shut) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
    return 0;
}

size_t gw_tls_feed_room(const gw_tls_conn_t *c)
{
    return GW_TLS_IN_MAX - (c->in.len - c->in_off);
}

int gw_tls_feed(gw_tls_conn_t *c, const void *cipher, size_t n)
{
    if (c->failed)
        return -EPROTO;
    if (c->peer_closed)
        return -EPIPE;
    if (n > gw_tls_feed_room(c))
        return -ENOBUFS;
    if (c->in_off) {
        /* At most a partial record is left: the move is small. */
        buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    if (n && buf_append(&c->in, cipher, n) < 0)
        return -ENOBUFS;
    return conn_handshake(c);
}

ssize_t gw_tls_read(gw_tls_conn_t *c, void *plain, size_t cap)
{
    if (c->failed)
        return -EPROTO;
    if (c->peer_closed)
        return -EPIPE;
    int rc = conn_handshake(c);
    if (rc < 0)
        return rc;
    if (!c->done || cap == 0)
        return 0;
    ERR_clear_error();
    int r = SSL_read(c->ssl, plain, cap > INT_MAX ? INT_MAX : (int)cap);
    if (r > 0)
        return r;
    int e = SSL_get_error(c->ssl, r);
    if (e == SSL_ERROR_WANT_READ && !c->overflow)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN) {
        c->peer_closed = true;
        return -EPIPE;
    }
    return conn_fail(c, "read", e);
}

size_t gw_tls_writable(const gw_tls_conn_t *c)
{
    size_t used = c->plain.len + gw_tls_pending(c);
    return used >= GW_TLS_OUT_MAX ? 0 : GW_TLS_OUT_MAX - used;
}

int gw_tls_write(gw_tls_conn_t *c, const void *plain, size_t n)
{
    if (c->failed)
        return -EPROTO;
    if (c->shut)
        return -EPIPE;
    if (n > gw_tls_writable(c))
        return -ENOBUFS;
    if (n == 0)
        return 0;
    if (!c->done)
        return buf_append(&c->plain, plain, n); /* within GW_TLS_OUT_MAX: checked */
    return conn_encrypt(c, plain, n);
}

size_t gw_tls_pending(const gw_tls_conn_t *c)
{
    return (c->send.len - c->send_off) + c->fill.len;
}

const void *gw_tls_out(gw_tls_conn_t *c, size_t *len)
{
    if (c->send_off == c->send.len && c->fill.len) {
        /* `send` is empty (and freed): what was produced since becomes the
         * run handed out, and new ciphertext goes to a new `fill`. */
        buf_free(&c->send);
        c->send = c->fill;
        c->send_off = 0;
        buf_init(&c->fill, OUT_HARD_MAX);
    }
    *len = c->send.len - c->send_off;
    return *len ? c->send.data + c->send_off : NULL;
}

void gw_tls_out_consume(gw_tls_conn_t *c, size_t n)
{
    size_t avail = c->send.len - c->send_off;
    if (n > avail)
        n = avail; /* a caller bug; never run past the data */
    c->send_off += n;
    if (c->send_off == c->send.len) {
        buf_free(&c->send);
        c->send_off = 0;
    }
}

bool gw_tls_handshake_done(const gw_tls_conn_t *c)
{
    return c->done;
}

const char *gw_tls_sni(const gw_tls_conn_t *c)
{
    return c->sni;
}

/* The host list is fixed when the context is made (reloads swap only the
 * SSL_CTX of each host), so picking for a request's Host here is safe on
 * any thread at any time. */
bool gw_tls_host_covered(const gw_tls_conn_t *c, const char *host, size_t len)
{
    if (!c->sni || !host)
        return true;
    if (len && host[0] == '[')
        return true; /* an IP literal: no SNI names it, nothing to compare */
    const char *colon = memchr(host, ':', len);
    if (colon)
        len = (size_t)(colon - host);
    if (len && host[len - 1] == '.')
        len--;
    if (len == 0 || len > HOST_MAX)
        return false;
    char name[HOST_MAX + 1];
    for (size_t i = 0; i < len; i++)
        name[i] = (char)tolower((unsigned char)host[i]);
    name[len] = '\0';
    if (strcmp(name, c->sni) == 0)
        return true;
    return host_pick(c->ctx, name) == c->host;
}

void gw_tls_shutdown(gw_tls_conn_t *c)
{
    if (c->shut)
        return;
    c->shut = true;
    /* Before the handshake finished there is no session to close (OpenSSL
     * refuses); plaintext queued by then goes out, and close_notify after
     * it, when the handshake completes (conn_handshake). */
    if (c->failed || !c->done)
        return;
    ERR_clear_error();
    SSL_shutdown(c->ssl); /* 0: ours queued, theirs not seen yet; both fine */
    ERR_clear_error();
}

const char *gw_tls_error(const gw_tls_conn_t *c)
{
    return c->failed ? c->err : NULL;
}
