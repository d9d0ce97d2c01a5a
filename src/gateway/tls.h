/* gateway/tls: TLS termination for the gateway's client connections, with no
 * socket of its own.
 *
 * A connection is a byte transformer: the proxy feeds the ciphertext it read
 * from the client socket (gw_tls_feed), takes plaintext out (gw_tls_read),
 * hands plaintext in (gw_tls_write) and sends the ciphertext it is given
 * (gw_tls_out / gw_tls_out_consume). Nothing here does I/O or waits, so it
 * runs on a proxy thread's event loop; the transport (libuv, a test, a
 * fuzzer) stays the caller's.
 *
 * Certificates. A context holds one certificate (PEM chain + key files) per
 * host name: an exact name ("web.example.com"), a wildcard
 * ("*.example.com": exactly one more label, as X.509 wildcards match) or
 * the default (host NULL or ""; when none is given the first entry is the
 * default). The certificate of a handshake is picked from the client's SNI:
 * exact name, then wildcard, then default (also when the client sent none).
 *
 * Reload. gw_tls_ctx_reload re-reads the files whose identity (inode, size,
 * mtime) changed. Each host's OpenSSL context is published through an
 * atomic pointer and retired RCU-style, so proxy threads never take a lock
 * or wait: a handshake that starts after the swap gets the new certificate,
 * a connection already established keeps the one it was given. A file that
 * fails to load leaves that host on its previous certificate.
 *
 * Protocol: TLS 1.2 and 1.3 only, AEAD ECDHE suites, no renegotiation, no
 * compression, stateless session tickets (keys live as long as the context,
 * so resumption survives certificate reloads), ALPN "http/1.1" only (a
 * client offering no common protocol still connects, without ALPN).
 *
 * Threading: a context is shared by every proxy thread (reads only);
 * gw_tls_ctx_reload may run concurrently with handshakes on any thread (it
 * does file I/O: call it off the proxy loops). A connection belongs to one
 * thread. All connections must be freed before their context. */
#ifndef DROVER_GATEWAY_TLS_H
#define DROVER_GATEWAY_TLS_H

#include "core/err.h"

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

/* Bounds, so a peer can never grow a connection's memory without limit. */
#define GW_TLS_IN_MAX  (64u * 1024)  /* ciphertext fed and not yet decrypted */
#define GW_TLS_OUT_MAX (256u * 1024) /* plaintext queued + ciphertext not yet sent */

typedef struct gw_tls_cert_in {
    const char *host;      /* "web.example.com", "*.example.com", or NULL/"" for the default */
    const char *cert_file; /* PEM: the certificate, then its intermediates */
    const char *key_file;  /* PEM private key (unencrypted) */
} gw_tls_cert_in_t;

typedef struct gw_tls_ctx gw_tls_ctx_t;
typedef struct gw_tls_conn gw_tls_conn_t;

/* Load every certificate now (the strings are copied). Fails with -ENOENT
 * (a file missing) or -EINVAL (unreadable PEM, key not matching the
 * certificate, a bad or repeated host, two defaults, no entries), err naming
 * the host, the file and OpenSSL's reason. *out is owned by the caller. */
int gw_tls_ctx_new(const gw_tls_cert_in_t *certs, size_t n, gw_tls_ctx_t **out, err_t *err);

/* Re-read the files that changed since they were last loaded. Returns 0, or
 * the first failure (err names the file and the reason; every failure is
 * logged once per version of the file); hosts whose new files fail keep
 * serving their old certificate, the others switch. Safe while any number
 * of threads handshake; concurrent reloads are serialized. Blocks on file
 * I/O: never call it on a proxy loop. */
int gw_tls_ctx_reload(gw_tls_ctx_t *ctx, err_t *err);

/* NULL is a no-op. Every connection of ctx must already be freed. */
void gw_tls_ctx_free(gw_tls_ctx_t *ctx);

/* A server-side connection waiting for the ClientHello. Owned by the caller
 * (gw_tls_conn_free); never NULL. */
gw_tls_conn_t *gw_tls_conn_new(gw_tls_ctx_t *ctx);

/* How many bytes gw_tls_feed takes now: size the socket read with it (a
 * libuv alloc_cb giving min(scratch, room) bytes never reads what cannot be
 * fed). 0 means stop reading until gw_tls_read has drained the input. */
size_t gw_tls_feed_room(const gw_tls_conn_t *c);

/* Hand over ciphertext read from the client (all of it), and advance the
 * handshake if it is not finished (its answer shows up in gw_tls_out).
 * Returns 0; -ENOBUFS when more than GW_TLS_IN_MAX bytes would be waiting
 * (nothing taken: read plaintext out first); -EPROTO when the handshake
 * failed (see gw_tls_error; send what gw_tls_out holds, the alert, then
 * close); -EPIPE after the client's close_notify. */
int gw_tls_feed(gw_tls_conn_t *c, const void *cipher, size_t n);

/* Decrypt into plain: > 0 bytes, 0 when it needs more ciphertext (or cap is
 * 0), -EPIPE once the client sent close_notify, -EPROTO on a TLS error
 * (gw_tls_error says why). Call it until it returns <= 0 after each feed:
 * OpenSSL holds decrypted bytes that no further feed announces. Reading can
 * queue ciphertext too (handshake, key updates, alerts): check
 * gw_tls_pending after. */
ssize_t gw_tls_read(gw_tls_conn_t *c, void *plain, size_t cap);

/* Queue plaintext for the client, all of it or nothing: 0, -ENOBUFS when
 * the queued plaintext plus unsent ciphertext would pass GW_TLS_OUT_MAX,
 * -EPIPE after gw_tls_shutdown, -EPROTO after a TLS error. Bytes written
 * before the handshake finished are encrypted as soon as it does. */
int gw_tls_write(gw_tls_conn_t *c, const void *plain, size_t n);

/* How many bytes gw_tls_write would accept now (backpressure check). */
size_t gw_tls_writable(const gw_tls_conn_t *c);

/* Ciphertext waiting to be sent, in total. */
size_t gw_tls_pending(const gw_tls_conn_t *c);

/* The next contiguous run of ciphertext to send (NULL, *len 0 when none).
 * The bytes stay at that address, unchanged, until gw_tls_out_consume
 * covers them or the connection is freed: feeding, reading and writing
 * never move them, so they can be handed to an asynchronous write. Calling
 * it again before consuming returns the same bytes: keep one send in
 * flight, consume what it wrote, then ask again (a run may not be all of
 * gw_tls_pending). */
const void *gw_tls_out(gw_tls_conn_t *c, size_t *len);

/* Mark n bytes of the run gw_tls_out returned as sent (n <= that *len). */
void gw_tls_out_consume(gw_tls_conn_t *c, size_t n);

bool gw_tls_handshake_done(const gw_tls_conn_t *c);

/* The server name the client asked for (lowercase, no trailing dot), or
 * NULL when it sent none or the ClientHello has not arrived. Owned by c. */
const char *gw_tls_sni(const gw_tls_conn_t *c);

/* May a request for `host` (a Host header: any case, an optional port) be
 * served on this connection? Yes when the client sent no SNI, when host is
 * the SNI name, or when host would get the same certificate the handshake
 * chose; no when another certificate answers for it (the client is to
 * get 421 Misdirected Request and open a connection for that name). */
bool gw_tls_host_covered(const gw_tls_conn_t *c, const char *host, size_t len);

/* Queue close_notify after the queued plaintext (called before the
 * handshake finished, it is sent once it does; a no-op after an error);
 * later writes fail with -EPIPE. Send gw_tls_out's bytes, then close the
 * socket. */
void gw_tls_shutdown(gw_tls_conn_t *c);

/* Why the connection failed ("handshake: no shared cipher"), or NULL while
 * it has not. Owned by c. */
const char *gw_tls_error(const gw_tls_conn_t *c);

/* NULL is a no-op. */
void gw_tls_conn_free(gw_tls_conn_t *c);

#endif
