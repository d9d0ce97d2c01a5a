/* gateway/proxy_http: the client side of the HTTP proxy: reading and
 * validating request heads, routing, rewriting the head for the backend,
 * streaming the request body, relaying the response (rewritten head,
 * re-framed body), keep-alive and pipelining, our own error answers, and
 * the client byte I/O layer (reads land in c->in; writes go out as iovecs
 * through gw_client_write), the one place TLS slots in: on an HTTPS
 * connection ciphertext is read into a per-thread scratch buffer, fed to
 * gateway/tls and decrypted into c->in, and a write slot's iovecs are
 * encrypted and sent from the TLS layer's output, so everything above the
 * layer is the same code for HTTP and HTTPS.
 *
 * Request heads are collected whole (up to max_header_bytes) and checked on
 * the raw bytes for what http-parser tolerates but a backend may read
 * differently (bare CR or LF, obs-fold, NUL); http-parser then parses the
 * head and, in place, the body. Bodies are re-framed rather than copied
 * raw: a chunked body goes out as our own chunk lines around the data
 * http-parser hands us, so chunk extensions, trailers and any framing
 * oddity never reach the backend (request smuggling needs two parsers to
 * disagree; the backend only ever sees framing we wrote). */
#include "gateway/proxy_internal.h"

#include "core/alloc.h"
#include "core/log.h"

#include <errno.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

enum { CB_NONE, CB_FIELD, CB_VALUE };

#define LINGER_MS 2000

static const char crlf[] = "\r\n";
static const char chunk_end[] = "0\r\n\r\n";
static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void client_process(gw_client_t *c);
static void client_pump_body(gw_client_t *c);
static void client_up_failed(gw_client_t *c, gw_upstream_t *u, int status, bool connect_failure);
static void client_start_send(gw_client_t *c);
static void client_finish_response(gw_client_t *c);
static void client_linger_close(gw_client_t *c);
static void client_on_timer(uv_timer_t *h);
static bool client_want_read(const gw_client_t *c);
static void client_tls_pull(gw_client_t *c);
static void client_tls_push(gw_client_t *c);
static void client_tls_flush(gw_client_t *c);
static void client_tls_fail(gw_client_t *c);

/* ---- small helpers ---------------------------------------------------------- */

static size_t fmt_u64(char *out, uint64_t v, unsigned base)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = "0123456789abcdef"[v % base];
        v /= base;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static inline void out_lit(buf_t *b, const char *s, size_t n)
{
    (void)buf_append(b, s, n);
}
#define OUT(b, lit) out_lit((b), lit, sizeof(lit) - 1)

static bool name_is(const char *p, size_t n, const char *lit, size_t litn)
{
    return n == litn && strncasecmp(p, lit, n) == 0;
}
#define NAME_IS(p, n, lit) name_is((p), (n), lit, sizeof(lit) - 1)

/* Hop-by-hop headers (RFC 9110 7.6.1) plus the framing headers we rewrite. */
bool gw_http_hop_by_hop(const char *p, size_t n)
{
    switch (n) {
    case 2: return NAME_IS(p, n, "te");
    case 7: return NAME_IS(p, n, "trailer") || NAME_IS(p, n, "upgrade");
    case 10: return NAME_IS(p, n, "connection") || NAME_IS(p, n, "keep-alive");
    case 16: return NAME_IS(p, n, "proxy-connection");
    case 17: return NAME_IS(p, n, "transfer-encoding");
    default: return false;
    }
}

bool gw_http_conn_token_has(const char *v, size_t vn, const char *name, size_t nn)
{
    size_t i = 0;
    while (i < vn) {
        while (i < vn && (v[i] == ' ' || v[i] == '\t' || v[i] == ','))
            i++;
        size_t s = i;
        while (i < vn && v[i] != ',' && v[i] != ' ' && v[i] != '\t')
            i++;
        if (i - s == nn && strncasecmp(v + s, name, nn) == 0)
            return true;
        while (i < vn && v[i] != ',')
            i++;
    }
    return false;
}

bool gw_http_named_by_connection(const char *base, const gw_hspan_t *hs, size_t nhs,
                                 const char *name, size_t nn)
{
    for (size_t i = 0; i < nhs; i++)
        if (NAME_IS(base + hs[i].name, hs[i].name_len, "connection") &&
            gw_http_conn_token_has(base + hs[i].val, hs[i].val_len, name, nn))
            return true;
    return false;
}

/* RFC 9110 tchar: http-parser (not built strict) lets spaces through in
 * header names, which a backend might read as a different header. */
bool gw_http_token_ok(const char *p, size_t n)
{
    static const char extra[] = "!#$%&'*+-.^_`|~";
    if (n == 0)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)p[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch && memchr(extra, ch, sizeof(extra) - 1))))
            return false;
    }
    return true;
}

static bool reqid_ok(const char *v, size_t n)
{
    if (n == 0 || n > GW_REQID_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char ch = v[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              ch == '-' || ch == '_' || ch == '.'))
            return false;
    }
    return true;
}

/* Copy for the access log and error texts: bounded, control bytes and
 * quotes replaced so the text is safe in JSON and plain-text bodies. */
static void copy_clean(char *dst, size_t cap, const char *src, size_t n)
{
    if (n >= cap)
        n = cap - 1;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)src[i];
        dst[i] = (ch < 0x20 || ch >= 0x7f || ch == '"' || ch == '\\') ? '?' : (char)ch;
    }
    dst[n] = '\0';
}

static const char *status_text(int s)
{
    switch (s) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Content Too Large";
    case 421: return "Misdirected Request";
    case 431: return "Request Header Fields Too Large";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 504: return "Gateway Timeout";
    default: return "Error";
    }
}

/* ---- the client byte layer -------------------------------------------------- */

static void client_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    gw_client_t *c = h->data;
    b->base = c->in + c->in_len;
    b->len = c->in_cap - c->in_len;
}

static void client_on_read(uv_stream_t *s, ssize_t n, const uv_buf_t *b)
{
    gw_client_t *c = s->data;
    if (n > 0) {
        gw_client_on_bytes(c, (size_t)n);
    } else if (n < 0) {
        gw_client_on_eof(c, (int)n);
    }
}

static void client_on_close(uv_handle_t *h);

/* TLS reads land in the thread's scratch buffer (a read callback runs right
 * after its alloc callback, so one buffer serves every connection), never
 * more than the TLS layer takes now. */
static void client_tls_alloc(uv_handle_t *h, size_t hint, uv_buf_t *b)
{
    (void)hint;
    gw_client_t *c = h->data;
    size_t room = gw_tls_feed_room(c->tls);
    b->base = c->t->tls_scratch;
    b->len = room < GW_TLS_SCRATCH ? room : GW_TLS_SCRATCH;
}

static void client_tls_on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *b)
{
    gw_client_t *c = st->data;
    if (n == UV_ENOBUFS) {
        /* the TLS input is full: read again once a pull drained it */
        uv_read_stop(st);
        c->reading = false;
        return;
    }
    if (n < 0) {
        gw_client_on_eof(c, (int)n);
        return;
    }
    if (n == 0 || c->closing || c->tls_dead || c->lingering)
        return; /* lingering: what still comes is dropped unread */
    int rc = gw_tls_feed(c->tls, b->base, (size_t)n);
    if (rc == -EPIPE)
        return; /* after the client's close_notify: nothing more to read */
    if (rc < 0) {
        client_tls_fail(c);
        return;
    }
    client_tls_pull(c);
}

/* Decrypt into `in` while it has room and the request code takes bytes,
 * handing each piece to the same code a plain read feeds. Output the
 * reads produced (handshake, tickets, alerts, plaintext written before the
 * handshake finished) goes out after. */
static void client_tls_pull(gw_client_t *c)
{
    c->tls_starved = false;
    while (!c->closing && !c->tls_dead) {
        if (!client_want_read(c)) {
            c->tls_starved = !c->peer_eof;
            break;
        }
        ssize_t r = gw_tls_read(c->tls, c->in + c->in_len, c->in_cap - c->in_len);
        if (r > 0) {
            gw_client_on_bytes(c, (size_t)r);
            continue;
        }
        if (r == 0)
            break;
        if (r == -EPIPE) {
            client_tls_push(c);
            if (!c->closing && !c->peer_eof)
                gw_client_on_eof(c, UV_EOF);
            return;
        }
        client_tls_fail(c);
        return;
    }
    if (c->closing || c->tls_dead)
        return;
    client_tls_push(c);
    gw_client_read_update(c);
}

/* The handshake failed or the peer broke the protocol: send what the TLS
 * layer holds (usually an alert), then close. */
static void client_tls_fail(gw_client_t *c)
{
    if (c->tls_dead || c->closing)
        return;
    c->tls_dead = true;
    gw_tmetrics_t *m = &c->t->m;
    atomic_store_explicit(&m->tls_errors,
                          atomic_load_explicit(&m->tls_errors, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    const char *why = gw_tls_error(c->tls);
    log_debug("gateway", "tls client %s: %s", c->addr, why ? why : "protocol error");
    gw_client_read_update(c);
    client_tls_flush(c);
    if (!c->tls_wbusy)
        gw_client_close(c);
}

static void client_tls_write_cb(uv_write_t *req, int status)
{
    gw_client_t *c = req->data;
    c->tls_wbusy = false;
    c->wpending--;
    if (status == 0)
        gw_tls_out_consume(c->tls, c->tls_wlen);
    if (c->closing || status < 0) {
        gw_client_close(c);
        return;
    }
    if (c->tls_dead) {
        client_tls_flush(c);
        if (!c->tls_wbusy)
            gw_client_close(c);
        return;
    }
    client_tls_push(c);
    if (!c->closing && c->linger_pending && c->wpending == 0)
        client_linger_close(c);
}

/* Send the TLS layer's ciphertext, one write in flight: straight away when
 * the kernel takes it, else the rest with uv_write (whose completion sends
 * the next run). The write counts in wpending so the connection outlives
 * it. */
static void client_tls_flush(gw_client_t *c)
{
    if (c->tls_wbusy || c->closing || !c->has_tcp)
        return;
    uv_stream_t *st = (uv_stream_t *)&c->tcp;
    for (;;) {
        size_t len;
        const char *p = gw_tls_out(c->tls, &len);
        if (!len)
            return;
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)len);
        int w = uv_try_write(st, &b, 1);
        if (w == UV_EAGAIN)
            w = 0;
        if (w < 0) {
            gw_client_close(c);
            return;
        }
        if ((size_t)w == len) {
            gw_tls_out_consume(c->tls, len);
            continue;
        }
        if (w > 0)
            gw_tls_out_consume(c->tls, (size_t)w);
        b = uv_buf_init((char *)p + w, (unsigned)(len - (size_t)w));
        c->tls_wlen = len - (size_t)w;
        c->tls_wreq.data = c;
        if (uv_write(&c->tls_wreq, st, &b, 1, client_tls_write_cb) < 0) {
            gw_client_close(c);
            return;
        }
        c->tls_wbusy = true;
        c->wpending++;
        return;
    }
}

/* Encrypt the queued write slots in order and send the ciphertext. A slot
 * completes once all of it is encrypted and sent (the handshake done and
 * nothing pending), so its source buffer stays locked, and the side it
 * comes from unread, until the client took the bytes: the same
 * backpressure as a plain socket write. Past GW_TLS_OUT_MAX it waits for
 * output to drain. */
static void client_tls_push(gw_client_t *c)
{
    gw_tls_conn_t *tls = c->tls;
    for (;;) {
        if (c->closing || c->tls_dead)
            return;
        gw_wslot_t *s = c->tls_wq;
        bool all = true;
        while (s && c->tls_wi < s->n) {
            const uv_buf_t *b = &s->iov[c->tls_wi];
            size_t left = b->len - c->tls_woff;
            if (left == 0) {
                c->tls_wi++;
                c->tls_woff = 0;
                continue;
            }
            size_t room = gw_tls_writable(tls);
            size_t k = left < room ? left : room;
            int rc = k ? gw_tls_write(tls, b->base + c->tls_woff, k) : -ENOBUFS;
            if (rc == -ENOBUFS) {
                all = false;
                break;
            }
            if (rc < 0) {
                client_tls_fail(c);
                return;
            }
            c->tls_woff += k;
        }
        client_tls_flush(c);
        if (c->closing || !s)
            return;
        if (all && gw_tls_handshake_done(tls) && gw_tls_pending(tls) == 0) {
            c->tls_wq = s->tnext;
            if (!c->tls_wq)
                c->tls_wq_tail = NULL;
            c->tls_wi = 0;
            c->tls_woff = 0;
            gw_defer_complete(c->t, s, 0);
            continue;
        }
        /* a flush that drained at once made room: encrypt more now */
        if (c->tls_wbusy || all || gw_tls_writable(tls) == 0)
            return;
    }
}

/* Give the connection its libuv handle the first time it has to wait on
 * the socket (for bytes, or for room to write). A connection-per-request
 * client usually never needs one: its request is read right after accept,
 * its response written with one sendmsg and the socket closed with
 * close(2), which saves setting up a handle, an ioctl and an epoll_ctl per
 * connection. */
static bool client_attach(gw_client_t *c)
{
    if (c->has_tcp)
        return true;
    if (c->fd < 0)
        return false;
    uv_tcp_init(&c->t->loop, &c->tcp);
    c->tcp.data = c;
    c->has_tcp = true;
    c->open_handles++;
    if (uv_tcp_open(&c->tcp, c->fd) != 0) {
        close(c->fd);
        c->fd = -1;
        gw_client_close(c);
        return false;
    }
    return true;
}

/* Whether bytes arriving now could be taken into `in`. */
static bool client_want_read(const gw_client_t *c)
{
    bool want = !c->closing && !c->peer_eof && c->in_len < c->in_cap;
    if (c->state == CS_TUNNEL && (!c->up || !c->up->connected))
        want = want && c->in_len - c->in_off < c->in_cap / 2;
    return want;
}

/* Pull this TLS client's decrypted input from the check phase: OpenSSL and
 * the TLS input buffer may hold bytes that no socket event will announce,
 * and pulling right here could re-enter the request code that called. */
static void client_tls_queue(gw_client_t *c)
{
    if (c->tls_queued)
        return;
    gw_thread_t *t = c->t;
    c->tls_queued = true;
    c->tls_next = t->tls_due;
    t->tls_due = c;
    gw_thread_wake(t);
}

void gw_client_tls_run_due(gw_thread_t *t)
{
    gw_client_t *c;
    while ((c = t->tls_due)) {
        t->tls_due = c->tls_next;
        c->tls_next = NULL;
        c->tls_queued = false;
        if (!c->closing)
            client_tls_pull(c);
    }
}

/* Read only when there is room and the bytes can be used: the buffer is
 * also the backpressure bound (a full buffer stops reading). */
void gw_client_read_update(gw_client_t *c)
{
    bool want = client_want_read(c);
    /* A request read whole waits for its response: a connection not yet
     * watched is not registered just for that (a connection-per-request
     * client then never costs an epoll registration: its request is read
     * straight after accept). One already watched stays watched: stopping
     * and restarting would cost two epoll changes per request. */
    if (c->state == CS_BODY && c->req_done && !c->reading)
        want = false;
    if (c->t->detached) {
        c->reading = want;
        return;
    }
    if (c->tls) {
        /* room again after a pull stopped for lack of it: what TLS holds
         * comes first; the socket is read only while TLS takes more */
        if (want && c->tls_starved)
            client_tls_queue(c);
        if (c->tls_dead || gw_tls_feed_room(c->tls) == 0)
            want = false;
    }
    if (want && !c->reading) {
        if (!client_attach(c))
            return;
        if (uv_read_start((uv_stream_t *)&c->tcp, c->tls ? client_tls_alloc : client_alloc,
                          c->tls ? client_tls_on_read : client_on_read) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

static void client_write_cb(uv_write_t *req, int status)
{
    gw_slot_complete(req->data, status);
}

void gw_client_write(gw_client_t *c, gw_wslot_t *s)
{
    s->busy = true;
    c->wpending++;
    for (unsigned i = 0; i < s->n; i++)
        atomic_store_explicit(&c->t->m.bytes_out,
                              atomic_load_explicit(&c->t->m.bytes_out, memory_order_relaxed) +
                                  s->iov[i].len,
                              memory_order_relaxed);
    if (s->src_u)
        s->src_u->in_locks++;
    if (c->t->detached) {
        gw_dconn_t *d = c->d;
        for (unsigned i = 0; i < s->n; i++)
            if (d && d->out.len + s->iov[i].len <= (1u << 20))
                (void)buf_append(&d->out, s->iov[i].base, s->iov[i].len);
        gw_defer_complete(c->t, s, 0);
        return;
    }
    if (c->tls) {
        if (c->closing || c->tls_dead) {
            gw_defer_complete(c->t, s, UV_ECANCELED);
            return;
        }
        s->tnext = NULL;
        if (c->tls_wq_tail)
            c->tls_wq_tail->tnext = s;
        else
            c->tls_wq = s;
        c->tls_wq_tail = s;
        client_tls_push(c);
        return;
    }
    if (!c->closing && c->fd >= 0 && (!c->has_tcp || c->tcp.write_queue_size == 0)) {
        /* Nothing queued: write with a plain syscall (as uv_try_write
         * would, but with the flags below), and take a handle only if the
         * kernel does not take everything. */
        size_t total = 0;
        for (unsigned i = 0; i < s->n; i++)
            total += s->iov[i].len;
        struct msghdr mh = {.msg_iov = (struct iovec *)s->iov, .msg_iovlen = s->n};
        /* The last write before a close: MSG_MORE holds the data back for
         * the FIN that shutdown queues right after, so response and FIN
         * leave as one segment (one packet, one ACK less for both hosts'
         * stacks per connection-per-request client). */
        ssize_t w = sendmsg(c->fd, &mh, MSG_NOSIGNAL | (s->close_after ? MSG_MORE : 0));
        if (w >= 0 && (size_t)w == total) {
            if (s->close_after && shutdown(c->fd, SHUT_WR) == 0)
                c->fin_sent = true;
            gw_defer_complete(c->t, s, 0);
            return;
        }
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
            gw_defer_complete(c->t, s, uv_translate_sys_error(errno));
            return;
        }
        if (w > 0) {
            size_t left = (size_t)w;
            unsigned first = 0;
            while (left >= s->iov[first].len) {
                left -= s->iov[first].len;
                first++;
            }
            s->iov[first].base += left;
            s->iov[first].len -= left;
            memmove(s->iov, s->iov + first, (s->n - first) * sizeof(s->iov[0]));
            s->n -= first;
        }
        if (!client_attach(c)) {
            gw_defer_complete(c->t, s, UV_ECANCELED);
            return;
        }
    }
    gw_stream_write(c->t, s, (uv_stream_t *)&c->tcp, client_write_cb, c->closing);
}

/* A write to the client finished (or was cancelled by close). */
void gw_client_write_done(gw_client_t *c, gw_wslot_t *s, int status)
{
    gw_upstream_t *u = s->src_u;
    bool close_after = s->close_after;
    void (*done)(gw_wslot_t *, int) = s->done;
    s->src_u = NULL;
    gw_slot_free(s);
    c->wpending--;
    if (done)
        done(s, status); /* a worker bridge slot (bridge.c): its bytes are out */
    if (u) {
        u->in_locks--;
        if (u->c == c && !c->closing)
            gw_client_up_unlocked(c, u);
        else
            gw_up_unlock(u); /* may free u (closed, or pooled meanwhile) */
    }
    if (c->closing) {
        gw_client_close(c); /* re-check whether c can be freed */
        return;
    }
    if (status < 0) {
        gw_client_close(c);
        return;
    }
    if (c->state == CS_BODY && c->resp_started)
        gw_client_set_deadline(c, c->t->p->o.backend_timeout_ms, TMO_BACKEND);
    if (close_after && c->wpending == 0)
        client_linger_close(c);
    else if (c->linger_pending && c->wpending == 0)
        client_linger_close(c);
}

static void client_on_close(uv_handle_t *h)
{
    gw_client_t *c = h->data; /* the tcp handle or the timer */
    c->open_handles--;
    gw_client_close(c);
}

static void client_free(gw_client_t *c)
{
    gw_thread_t *t = c->t;
    if (c->tls) {
        if (c->tls_queued)
            for (gw_client_t **pp = &t->tls_due; *pp; pp = &(*pp)->tls_next)
                if (*pp == c) {
                    *pp = c->tls_next;
                    break;
                }
        c->tls_queued = false;
        gw_tls_conn_free(c->tls);
        c->tls = NULL;
    }
    if (c->prev)
        c->prev->next = c->next;
    else if (t->clients == c)
        t->clients = c->next;
    if (c->next)
        c->next->prev = c->prev;
    t->n_clients--;
    atomic_store_explicit(&t->m.conns_active, t->n_clients, memory_order_relaxed);
    /* keep a few connection structs, buffers and all, for the next
     * accepts: a connection-per-request client would otherwise cost a
     * dozen allocations per request */
    if (t->n_spare < GW_SPARE_CLIENTS && !t->stopping && !t->detached) {
        c->next = t->spare;
        t->spare = c;
        t->n_spare++;
        return;
    }
    gw_client_destroy(c);
}

void gw_client_destroy(gw_client_t *c)
{
    buf_free(&c->hdr);
    buf_free(&c->rhead);
    buf_free(&c->err);
    free(c->in);
    free(c);
}

/* Close the client (idempotent); frees it once both handles are closed and
 * no write out of its buffer is queued anywhere. */
void gw_client_close(gw_client_t *c)
{
    if (!c->closing) {
        c->closing = true;
        c->state = CS_CLOSED;
        if (c->sref || c->b || c->up)
            gw_client_end_request(c);
        if (c->t->detached) {
            /* pending writes to this client complete as cancelled */
            gw_wslot_t **pp = &c->t->dq_head, *prev = NULL;
            gw_wslot_t *cancel = NULL;
            while (*pp) {
                gw_wslot_t *s = *pp;
                if (s->dir == GW_SLOT_TO_CLIENT && s->owner == c) {
                    *pp = s->dnext;
                    if (c->t->dq_tail == s)
                        c->t->dq_tail = prev;
                    s->dnext = cancel;
                    cancel = s;
                } else {
                    prev = s;
                    pp = &s->dnext;
                }
            }
            while (cancel) {
                gw_wslot_t *s = cancel;
                cancel = s->dnext;
                gw_slot_complete(s, UV_ECANCELED);
            }
            c->open_handles = 0;
            if (c->d)
                c->d->closed = true;
        } else {
            /* slots waiting for TLS complete as cancelled (their sources
             * are unlocked); a ciphertext write in flight is cancelled by
             * closing the handle */
            while (c->tls_wq) {
                gw_wslot_t *s = c->tls_wq;
                c->tls_wq = s->tnext;
                gw_defer_complete(c->t, s, UV_ECANCELED);
            }
            c->tls_wq_tail = NULL;
            if (c->reading)
                uv_read_stop((uv_stream_t *)&c->tcp);
            c->reading = false;
            if (c->has_tcp) {
                uv_close((uv_handle_t *)&c->tcp, client_on_close);
            } else if (c->fd >= 0) {
                close(c->fd);
            }
            c->fd = -1;
            uv_close((uv_handle_t *)&c->timer, client_on_close);
        }
    }
    if (c->open_handles == 0 && c->in_locks == 0 && c->wpending == 0 && !c->d)
        client_free(c);
}

/* Close after the response is out: shut our side, then read and drop what
 * the client still sends for a little while, so closing with unread bytes
 * does not reset the connection and destroy the response in flight. */
static void client_linger_close(gw_client_t *c)
{
    if (c->closing)
        return;
    if (c->wpending > 0) {
        c->linger_pending = true;
        return;
    }
    if (c->tls && !c->tls_shut && !c->tls_dead) {
        /* close_notify first, so the client can tell our close from a
         * truncation; the close goes on once it is sent */
        c->tls_shut = true;
        gw_tls_shutdown(c->tls);
        client_tls_flush(c);
        if (c->closing)
            return;
        if (c->wpending > 0) {
            c->linger_pending = true;
            return;
        }
    }
    /* Nothing unread (the request was read whole and nothing followed it):
     * closing cannot reset the connection, so skip the linger, which
     * costs a shutdown, two epoll changes and a read per connection. */
    if (c->t->detached || c->peer_eof || (c->req_done && c->in_len == c->in_off)) {
        gw_client_close(c);
        return;
    }
    c->linger_pending = false;
    c->state = CS_CLOSED;
    c->lingering = true;
    c->in_len = c->in_off = 0;
    if (!client_attach(c))
        return;
    if (!c->fin_sent)
        uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, NULL);
    gw_client_set_deadline(c, LINGER_MS, TMO_LINGER);
    gw_client_read_update(c);
}

/* A tunnel's backend ended its direction: pass that on the way this
 * client's bytes travel (FIN on the socket, close_notify over TLS) while
 * its own direction stays open, so it can still send and be heard. */
void gw_client_shut_write(gw_client_t *c)
{
    if (c->closing || c->fin_sent)
        return;
    c->fin_sent = true;
    if (c->t->detached)
        return;
    if (c->tls) {
        /* close_notify ends our direction; reading goes on (OpenSSL reads
         * after its own close_notify until the peer's) */
        c->tls_shut = true;
        gw_tls_shutdown(c->tls);
        client_tls_flush(c);
        return;
    }
    if (c->has_tcp) {
        if (uv_shutdown(&c->shut, (uv_stream_t *)&c->tcp, NULL) < 0)
            gw_client_close(c);
    } else if (c->fd >= 0 && shutdown(c->fd, SHUT_WR) < 0) {
        gw_client_close(c);
    }
}

/* Arm the one timer of the connection lazily: moving a deadline later costs
 * nothing (the timer re-arms itself when it fires early), which keeps timer
 * heap updates off the per-read path. */
void gw_client_set_deadline(gw_client_t *c, uint64_t ms, int kind)
{
    c->tmo_kind = kind;
    if (c->t->detached) {
        c->deadline = ms;
        return;
    }
    uint64_t now = uv_now(&c->t->loop);
    c->deadline = now + ms;
    if (c->timer_at == 0 || c->timer_at > c->deadline) {
        c->timer_at = c->deadline;
        uv_timer_start(&c->timer, client_on_timer, ms, 0);
    }
}

static void client_clear_deadline(gw_client_t *c)
{
    c->deadline = 0;
    c->tmo_kind = TMO_NONE;
}

static void client_on_timer(uv_timer_t *h)
{
    gw_client_t *c = h->data;
    c->timer_at = 0;
    if (c->closing || c->deadline == 0)
        return;
    uint64_t now = uv_now(&c->t->loop);
    if (now < c->deadline) {
        c->timer_at = c->deadline;
        uv_timer_start(&c->timer, client_on_timer, c->deadline - now, 0);
        return;
    }
    int kind = c->tmo_kind;
    client_clear_deadline(c);
    switch (kind) {
    case TMO_HEADER:
        if (c->in_len > c->in_off)
            gw_client_respond(c, 408, "request head not received in time");
        else
            gw_client_close(c);
        break;
    case TMO_CONNECT:
        if (c->up)
            client_up_failed(c, c->up, c->up->connect_err ? c->up->connect_err : UV_ETIMEDOUT,
                             true);
        break;
    case TMO_BACKEND:
        if (c->resp_started) {
            gw_client_close(c);
        } else if (!c->req_done && (!c->up || c->up->slot.busy == false)) {
            gw_client_respond(c, 408, "request body not received in time");
        } else {
            gw_client_respond(c, 504, "backend %s did not answer in time", c->b ? c->b->name : "?");
        }
        break;
    default: gw_client_close(c); break;
    }
}

/* ---- our own answers -------------------------------------------------------- */

/* A short plain-text answer saying why. The connection stays open only
 * when the request was well-formed, had no body still to come and the
 * client keeps alive; everything else closes after the answer. */
void gw_client_respond(gw_client_t *c, int status, const char *fmt, ...)
{
    if (c->closing || c->lingering)
        return;
    if (c->resp_started) {
        gw_client_close(c);
        return;
    }
    char body[512];
    va_list ap;
    va_start(ap, fmt);
    int bn = vsnprintf(body, sizeof(body) - 1, fmt, ap);
    va_end(ap);
    if (bn < 0)
        bn = 0;
    if ((size_t)bn > sizeof(body) - 2)
        bn = (int)sizeof(body) - 2;
    body[bn++] = '\n';
    bool keep = c->keep_alive && !c->t->draining && (c->req_done || !c->req_body) &&
                status != 400 && status != 408 && status != 413 && status != 431 &&
                c->state != CS_TUNNEL;
    if (c->up) {
        gw_upstream_t *u = c->up;
        c->up = NULL;
        u->c = NULL;
        gw_up_close(u);
        if (c->req_body && !c->req_done)
            keep = false;
    }
    c->status = status;
    c->resp_started = true;
    buf_t *o = &c->err;
    buf_reset(o);
    OUT(o, "HTTP/1.1 ");
    char num[24];
    (void)buf_append(o, num, fmt_u64(num, (uint64_t)status, 10));
    OUT(o, " ");
    (void)buf_append_str(o, status_text(status));
    OUT(o, "\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
    (void)buf_append(o, num, fmt_u64(num, (uint64_t)bn, 10));
    if (c->reqid[0]) {
        OUT(o, "\r\nX-Request-Id: ");
        (void)buf_append_str(o, c->reqid);
    }
    if (!keep)
        OUT(o, "\r\nConnection: close");
    else if (c->http_minor == 0)
        OUT(o, "\r\nConnection: keep-alive");
    if (c->tls && c->t->p->hsts[0]) {
        OUT(o, "\r\n");
        (void)buf_append_str(o, c->t->p->hsts);
    }
    OUT(o, "\r\n\r\n");
    (void)buf_append(o, body, (size_t)bn);
    c->resp_bytes = (uint64_t)bn;
    gw_wslot_t *s = gw_slot_get(&c->slot, GW_SLOT_TO_CLIENT, c);
    gw_slot_add(s, o->data, o->len);
    s->close_after = !keep;
    c->resp_close = !keep;
    c->state = CS_RESP_DONE;
    gw_client_write(c, s);
    client_finish_response(c);
}

/* ---- request heads ---------------------------------------------------------- */

static int req_on_url(http_parser *p, const char *at, size_t n)
{
    gw_client_t *c = p->data;
    if (c->url_len == 0)
        c->url_off = (uint32_t)(at - c->in);
    c->url_len += (uint32_t)n;
    return 0;
}

/* Open the next header span at byte offset off of the head (request and
 * response heads are recorded the same way, as offsets into the
 * connection's input buffer); false past GW_MAX_HEADERS. */
static bool hspan_open(gw_hspan_t **hs, size_t *n, size_t *cap, uint32_t off)
{
    if (*n >= GW_MAX_HEADERS)
        return false;
    if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 32;
        *hs = xrealloc(*hs, *cap * sizeof(**hs));
    }
    gw_hspan_t *h = &(*hs)[(*n)++];
    h->name = off;
    h->name_len = 0;
    h->val = off;
    h->val_len = 0;
    return true;
}

static int req_on_header_field(http_parser *p, const char *at, size_t n)
{
    gw_client_t *c = p->data;
    gw_thread_t *t = c->t;
    if (c->state != CS_HEAD)
        return 0; /* trailers: dropped */
    if (c->cb_state != CB_FIELD) {
        if (!hspan_open(&t->hs, &c->nhs, &t->hs_cap, (uint32_t)(at - c->in))) {
            c->too_many_headers = true;
            return 1;
        }
        c->cb_state = CB_FIELD;
    }
    t->hs[c->nhs - 1].name_len += (uint32_t)n;
    return 0;
}

static int req_on_header_value(http_parser *p, const char *at, size_t n)
{
    gw_client_t *c = p->data;
    gw_thread_t *t = c->t;
    if (c->state != CS_HEAD || c->nhs == 0)
        return 0;
    gw_hspan_t *h = &t->hs[c->nhs - 1];
    if (c->cb_state != CB_VALUE) {
        h->val = (uint32_t)(at - c->in);
        h->val_len = 0;
        c->cb_state = CB_VALUE;
    }
    h->val_len += (uint32_t)n;
    return 0;
}

static int req_on_body(http_parser *p, const char *at, size_t n)
{
    gw_client_t *c = p->data;
    gw_wslot_t *s = c->pump;
    c->body_seen += n;
    if (c->body_seen > c->body_limit) {
        c->body_too_big = true;
        return 1;
    }
    if (!s)
        return 0;
    if (c->req_chunked) {
        char *h = s->hex[s->nhex++];
        size_t hn = fmt_u64(h, n, 16);
        h[hn++] = '\r';
        h[hn++] = '\n';
        gw_slot_add(s, h, hn);
        gw_slot_add(s, at, n);
        gw_slot_add(s, crlf, 2);
    } else {
        gw_slot_add(s, at, n);
    }
    if (gw_slot_full(s, 4))
        http_parser_pause(p, 1);
    return 0;
}

static int req_on_message_complete(http_parser *p)
{
    gw_client_t *c = p->data;
    c->req_done = true;
    if (c->pump && c->req_chunked)
        gw_slot_add(c->pump, chunk_end, sizeof(chunk_end) - 1);
    http_parser_pause(p, 1);
    return 0;
}

static const http_parser_settings req_settings = {
    .on_url = req_on_url,
    .on_header_field = req_on_header_field,
    .on_header_value = req_on_header_value,
    .on_body = req_on_body,
    .on_message_complete = req_on_message_complete,
};

/* What http-parser lets through but a backend might read differently. */
static const char *head_bytes_problem(const char *h, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char ch = h[i];
        if (ch == '\0')
            return "NUL byte in request head";
        if (ch == '\r') {
            if (i + 1 >= n || h[i + 1] != '\n')
                return "bare CR in request head";
            i++;
            if (i + 1 < n && (h[i + 1] == ' ' || h[i + 1] == '\t'))
                return "obsolete line folding in request head";
        } else if (ch == '\n') {
            return "bare LF in request head";
        }
    }
    return NULL;
}

static const char *parse_error_text(enum http_errno e)
{
    switch (e) {
    case HPE_UNEXPECTED_CONTENT_LENGTH: return "conflicting Content-Length or Transfer-Encoding";
    case HPE_INVALID_CONTENT_LENGTH: return "invalid Content-Length";
    case HPE_INVALID_TRANSFER_ENCODING: return "Transfer-Encoding other than chunked (last)";
    case HPE_INVALID_CHUNK_SIZE: return "invalid chunk size";
    case HPE_INVALID_HEADER_TOKEN: return "invalid character in header name";
    case HPE_INVALID_METHOD: return "invalid method";
    case HPE_INVALID_URL: return "invalid request target";
    case HPE_INVALID_VERSION: return "invalid HTTP version";
    default: return http_errno_description(e);
    }
}

static bool method_idempotent(unsigned m)
{
    return m == HTTP_GET || m == HTTP_HEAD || m == HTTP_OPTIONS || m == HTTP_PUT ||
           m == HTTP_DELETE || m == HTTP_TRACE;
}

/* The value of cookie `name` in a Cookie header value, for sticky routes. */
static bool cookie_find(const char *v, size_t vn, const char *name, const char **out, size_t *outn)
{
    size_t nn = strlen(name);
    size_t i = 0;
    while (i < vn) {
        while (i < vn && (v[i] == ' ' || v[i] == ';'))
            i++;
        size_t s = i;
        while (i < vn && v[i] != '=' && v[i] != ';')
            i++;
        size_t e = i;
        while (e > s && v[e - 1] == ' ')
            e--;
        if (i < vn && v[i] == '=') {
            i++;
            size_t vs = i;
            while (i < vn && v[i] != ';')
                i++;
            if (e - s == nn && memcmp(v + s, name, nn) == 0) {
                *out = v + vs;
                *outn = i - vs;
                return true;
            }
        }
    }
    return false;
}

/* Everything a request needs from its head, gathered in one pass. */
typedef struct head_info {
    const char *host;
    size_t host_len;
    int n_host;
    const char *path;
    size_t path_len;
    const char *reqid;
    size_t reqid_len;
    bool upgrade_hdr;
    bool worker_app; /* X-Drover-App: the worker bridge routes it (bridge.c) */
} head_info_t;

/* Append the rewritten request head for the backend to c->hdr. */
static int build_request_head(gw_client_t *c, const head_info_t *hi, const char *target,
                              size_t target_len)
{
    gw_thread_t *t = c->t;
    const gw_hspan_t *hs = t->hs;
    const char *base = c->in;
    buf_t *o = &c->hdr;
    buf_reset(o);
    (void)buf_append_str(o, http_method_str((enum http_method)c->method));
    OUT(o, " ");
    (void)buf_append(o, target, target_len);
    OUT(o, " HTTP/1.1\r\n");
    bool xff_started = false;
    bool has_host = false;
    for (size_t i = 0; i < c->nhs; i++) {
        const char *n = base + hs[i].name;
        size_t nl = hs[i].name_len;
        const char *v = base + hs[i].val;
        size_t vl = hs[i].val_len;
        if (gw_http_hop_by_hop(n, nl)) {
            if (!(c->upgrade && NAME_IS(n, nl, "upgrade")))
                continue;
        } else if (NAME_IS(n, nl, "x-forwarded-for")) {
            if (!xff_started) {
                OUT(o, "X-Forwarded-For: ");
                xff_started = true;
            } else {
                OUT(o, ", ");
            }
            (void)buf_append(o, v, vl);
            continue;
        } else if (NAME_IS(n, nl, "x-forwarded-proto") || NAME_IS(n, nl, "x-forwarded-host") ||
                   NAME_IS(n, nl, "x-request-id")) {
            continue;
        } else if (c->has_conn_hdr && gw_http_named_by_connection(base, hs, c->nhs, n, nl)) {
            continue;
        }
        if (NAME_IS(n, nl, "host")) {
            if (hi->host != v) /* absolute-form target: its host wins */
                continue;
            has_host = true;
        }
        if (xff_started && !c->xff_done) {
            OUT(o, ", ");
            (void)buf_append_str(o, c->addr);
            OUT(o, "\r\n");
            c->xff_done = true;
        }
        (void)buf_append(o, n, nl);
        OUT(o, ": ");
        (void)buf_append(o, v, vl);
        OUT(o, "\r\n");
    }
    if (xff_started && !c->xff_done) {
        OUT(o, ", ");
        (void)buf_append_str(o, c->addr);
        OUT(o, "\r\n");
    } else if (!xff_started) {
        OUT(o, "X-Forwarded-For: ");
        (void)buf_append_str(o, c->addr);
        OUT(o, "\r\n");
    }
    if (!has_host && hi->host_len) {
        OUT(o, "Host: ");
        (void)buf_append(o, hi->host, hi->host_len);
        OUT(o, "\r\n");
    }
    if (c->req_chunked)
        OUT(o, "Transfer-Encoding: chunked\r\n");
    if (c->upgrade)
        OUT(o, "Connection: Upgrade\r\n");
    if (c->tls)
        OUT(o, "X-Forwarded-Proto: https\r\n");
    else
        OUT(o, "X-Forwarded-Proto: http\r\n");
    if (hi->host_len) {
        OUT(o, "X-Forwarded-Host: ");
        (void)buf_append(o, hi->host, hi->host_len);
        OUT(o, "\r\n");
    }
    OUT(o, "X-Request-Id: ");
    (void)buf_append_str(o, c->reqid);
    int rc = buf_append(o, "\r\n\r\n", 4);
    return rc;
}

static void new_request_id(gw_client_t *c)
{
    uint64_t a = gw_rand64(c->t), b = gw_rand64(c->t);
    static const char hx[] = "0123456789abcdef";
    for (int i = 0; i < 16; i++) {
        c->reqid[i] = hx[(a >> (60 - 4 * i)) & 15];
        c->reqid[16 + i] = hx[(b >> (60 - 4 * i)) & 15];
    }
    c->reqid[32] = '\0';
}

bool gw_client_pick_in(gw_client_t *c, const gw_pool_t *pool, gw_balance_t balance,
                       const void *seed, size_t sl, const gw_backend_t *exclude)
{
    gw_backend_t *b = gw_pool_pick(pool, balance, seed, sl, gw_thread_now(c->t), exclude);
    if (!b)
        return false;
    if (b == exclude) {
        gw_backend_unref(b);
        return false;
    }
    c->b = b;
    atomic_fetch_add_explicit(&b->active, 1, memory_order_relaxed);
    return true;
}

/* Pick a backend of c->pool (excluding `exclude`), seeded by the sticky
 * value or the client's address, and count the request on it. */
static bool client_pick(gw_client_t *c, const gw_backend_t *exclude)
{
    const void *seed = c->seed_len ? (const void *)c->seed : (const void *)c->addr;
    size_t sl = c->seed_len ? c->seed_len : strlen(c->addr);
    return gw_client_pick_in(c, c->pool, c->route->balance, seed, sl, exclude);
}

static void client_drop_backend(gw_client_t *c)
{
    if (c->b) {
        atomic_fetch_sub_explicit(&c->b->active, 1, memory_order_relaxed);
        gw_backend_unref(c->b);
        c->b = NULL;
    }
}

/* Get a connection to c->b and send once it is up. */
static void client_connect(gw_client_t *c, bool fresh)
{
    bool reused = false;
    gw_upstream_t *u = gw_up_get(c->t, c->b, c, fresh, &reused);
    c->up = u;
    c->head_sent = false;
    if (u->connected) {
        client_start_send(c);
    } else {
        gw_client_set_deadline(c, u->connect_err ? 0 : c->t->p->o.connect_timeout_ms, TMO_CONNECT);
    }
}

/* A head is complete in c->in[c->in_off, +head_len): route and forward. */
static void client_handle_head(gw_client_t *c, size_t head_len)
{
    gw_thread_t *t = c->t;
    gw_proxy_t *p = t->p;
    http_parser *hp = &c->parser;
    const char *bad = head_bytes_problem(c->in + c->in_off, head_len);
    c->t0_ns = uv_hrtime();
    c->nhs = 0;
    c->url_len = 0;
    c->cb_state = CB_NONE;
    c->reqid[0] = '\0';
    c->log_host[0] = c->log_path[0] = '\0';
    c->log_method[0] = '-';
    c->log_method[1] = '\0';
    if (bad) {
        gw_client_respond(c, 400, "%s", bad);
        return;
    }
    http_parser_init(hp, HTTP_REQUEST);
    hp->data = c;
    size_t got = http_parser_execute(hp, &req_settings, c->in + c->in_off, head_len);
    enum http_errno e = HTTP_PARSER_ERRNO(hp);
    if (c->too_many_headers) {
        gw_client_respond(c, 431, "more than %d request headers", GW_MAX_HEADERS);
        return;
    }
    if (e == HPE_PAUSED) {
        http_parser_pause(hp, 0);
    } else if (e != HPE_OK) {
        gw_client_respond(c, 400, "malformed request: %s", parse_error_text(e));
        return;
    }
    (void)got;
    c->in_off += head_len;
    c->method = hp->method;
    c->http_minor = hp->http_major == 1 ? hp->http_minor : 1;
    {
        const char *ms = http_method_str(hp->method);
        size_t ml = strlen(ms);
        if (ml >= sizeof(c->log_method))
            ml = sizeof(c->log_method) - 1;
        memcpy(c->log_method, ms, ml);
        c->log_method[ml] = '\0';
    }
    c->keep_alive = http_should_keep_alive(hp) && !t->draining;
    c->req_chunked = (hp->flags & F_CHUNKED) != 0;
    c->req_body = c->req_chunked || ((hp->flags & F_CONTENTLENGTH) && hp->content_length > 0);
    c->is_head = hp->method == HTTP_HEAD;
    c->idempotent = method_idempotent(hp->method);
    c->upgrade = hp->upgrade && hp->method != HTTP_CONNECT;
    if (hp->method == HTTP_CONNECT) {
        gw_client_respond(c, 405, "CONNECT is not supported");
        return;
    }
    if (hp->http_major != 1) {
        gw_client_respond(c, 400, "unsupported HTTP version");
        return;
    }

    /* one pass over the headers for what routing needs */
    head_info_t hi = {0};
    c->has_conn_hdr = false;
    const char *target = c->in + c->url_off;
    size_t target_len = c->url_len;
    for (size_t i = 0; i < c->nhs; i++) {
        const gw_hspan_t *h = &t->hs[i];
        const char *n = c->in + h->name;
        if (!gw_http_token_ok(n, h->name_len)) {
            gw_client_respond(c, 400, "invalid character in header name");
            return;
        }
        if (h->name_len == 10 && NAME_IS(n, h->name_len, "connection"))
            c->has_conn_hdr = true;
        if (NAME_IS(n, h->name_len, "host")) {
            hi.host = c->in + h->val;
            hi.host_len = h->val_len;
            hi.n_host++;
        } else if (NAME_IS(n, h->name_len, "x-request-id")) {
            hi.reqid = c->in + h->val;
            hi.reqid_len = h->val_len;
        } else if (h->name_len == 12 && NAME_IS(n, h->name_len, "x-drover-app")) {
            hi.worker_app = true;
        }
    }
    if (hi.n_host > 1) {
        gw_client_respond(c, 400, "more than one Host header");
        return;
    }
    if (hi.reqid && reqid_ok(hi.reqid, hi.reqid_len)) {
        memcpy(c->reqid, hi.reqid, hi.reqid_len);
        c->reqid[hi.reqid_len] = '\0';
    } else {
        new_request_id(c);
    }
    /* absolute-form target: "http://host[:port]/path" */
    if (target_len && target[0] != '/' && target[0] != '*') {
        const char *s = memchr(target, ':', target_len);
        if (!s || (size_t)(s - target) + 3 > target_len || s[1] != '/' || s[2] != '/') {
            gw_client_respond(c, 400, "malformed request: invalid request target");
            return;
        }
        const char *h0 = s + 3, *end = target + target_len;
        const char *slash = memchr(h0, '/', (size_t)(end - h0));
        const char *hend = slash ? slash : end;
        hi.host = h0;
        hi.host_len = (size_t)(hend - h0);
        target = slash ? slash : "/";
        target_len = slash ? (size_t)(end - slash) : 1;
    }
    if (!hi.host && c->http_minor >= 1) {
        gw_client_respond(c, 400, "missing Host header");
        return;
    }
    hi.path = target;
    hi.path_len = target_len;
    if (target_len == 1 && target[0] == '*') {
        hi.path = "/";
        hi.path_len = 1;
    }
    copy_clean(c->log_host, sizeof(c->log_host), hi.host ? hi.host : "", hi.host_len);
    copy_clean(c->log_path, sizeof(c->log_path), target, target_len);
    /* A name whose certificate is not the one this connection proved
     * (domain fronting, or a client reusing a connection across hosts) is
     * sent back to connect again for that name (RFC 9110, 15.5.20). */
    if (c->tls && hi.host && !gw_tls_host_covered(c->tls, hi.host, hi.host_len)) {
        gw_client_respond(c, 421, "host %s is not served on this connection (TLS name %s)",
                          c->log_host, gw_tls_sni(c->tls));
        return;
    }

    /* route */
    c->sref = t->cur;
    t->cur->users++;
    gw_snapshot_t *snap = c->sref->s;
    if (!snap) {
        gw_client_respond(c, 503, "no route table loaded yet");
        return;
    }
    /* X-Drover-App names a worker app directly (docs/gateway.md, "Worker
     * apps"): the bridge takes the request, whatever the routes say */
    if (hi.worker_app && !c->internal) {
        c->body_limit = p->o.max_body_bytes;
        gw_bridge_start(c, snap, NULL, target, target_len, hi.host, hi.host_len);
        return;
    }
    const gw_route_t *r;
    if (c->internal)
        r = gw_snapshot_internal_route(snap, c->port);
    else
        r = gw_snapshot_match(snap, hi.host, hi.host_len, hi.path, hi.path_len);
    if (!r && !c->internal) {
        /* /<app>/<event>/... names a worker app when no route matched */
        c->body_limit = p->o.max_body_bytes;
        if (gw_bridge_try_path(c, snap, target, target_len, hi.host, hi.host_len))
            return;
    }
    if (!r) {
        if (c->internal)
            gw_client_respond(c, 404, "no route for port %d", c->port);
        else
            gw_client_respond(c, 404, "no route for host %s",
                              c->log_host[0] ? c->log_host : "(none)");
        return;
    }
    c->route = r;
    c->body_limit = r->max_body ? r->max_body : p->o.max_body_bytes;
    if ((hp->flags & F_CONTENTLENGTH) && hp->content_length > c->body_limit) {
        gw_client_respond(c, 413, "request body of %llu bytes is over the limit of %llu",
                          (unsigned long long)hp->content_length,
                          (unsigned long long)c->body_limit);
        return;
    }
    if (r->kind == GW_ROUTE_WORKER) {
        /* HTTP over invocation (gateway/bridge.c) */
        gw_bridge_start(c, snap, r, target, target_len, hi.host, hi.host_len);
        return;
    }
    if (r->kind == GW_ROUTE_TCP) {
        gw_client_respond(c, 404, "no HTTP route for host %s", c->log_host);
        return;
    }
    /* sticky seed */
    c->seed_len = 0;
    if (r->sticky != GW_STICKY_NONE && r->sticky_name) {
        size_t sn = strlen(r->sticky_name);
        for (size_t i = 0; i < c->nhs; i++) {
            const gw_hspan_t *h = &t->hs[i];
            const char *n = c->in + h->name;
            const char *v = c->in + h->val;
            const char *sv = NULL;
            size_t svl = 0;
            if (r->sticky == GW_STICKY_HEADER && h->name_len == sn &&
                strncasecmp(n, r->sticky_name, sn) == 0) {
                sv = v;
                svl = h->val_len;
            } else if (r->sticky == GW_STICKY_COOKIE && NAME_IS(n, h->name_len, "cookie")) {
                cookie_find(v, h->val_len, r->sticky_name, &sv, &svl);
            }
            if (sv && svl) {
                if (svl > sizeof(c->seed))
                    svl = sizeof(c->seed);
                memcpy(c->seed, sv, svl);
                c->seed_len = svl;
                break;
            }
        }
    }
    c->pool = gw_route_pool(snap, r, c->seed_len ? c->seed : NULL, c->seed_len);
    if (!c->pool || c->pool->n == 0 || !client_pick(c, NULL)) {
        gw_client_respond(c, 503, "no healthy backend for %s", r->app[0] ? r->app : c->log_host);
        return;
    }
    if (build_request_head(c, &hi, target, target_len) < 0) {
        gw_client_respond(c, 431, "request head too large");
        return;
    }
    c->state = CS_BODY;
    client_connect(c, false);
}

/* Handle what is buffered: a new head, body bytes, tunnel bytes. */
static void client_process(gw_client_t *c)
{
    gw_proxy_t *p = c->t->p;
    if (c->closing)
        return;
    switch (c->state) {
    case CS_HEAD: {
        /* empty lines between requests are allowed (RFC 9112 2.2) */
        while (c->in_off < c->in_len && (c->in[c->in_off] == '\r' || c->in[c->in_off] == '\n'))
            c->in_off++;
        /* scan is only meaningful for the head being collected; body
         * handling moves offsets under it */
        if (c->scan < c->in_off || c->scan > c->in_len)
            c->scan = c->in_off;
        if (c->in_off == c->in_len) {
            if (c->in_locks == 0)
                c->in_off = c->in_len = c->scan = 0;
            break;
        }
        if (c->tmo_kind == TMO_IDLE)
            gw_client_set_deadline(c, p->o.header_timeout_ms, TMO_HEADER);
        size_t from = c->scan >= c->in_off + 3 ? c->scan - 3 : c->in_off;
        const char *end = NULL;
        if (c->in_len - from >= 4)
            end = memmem(c->in + from, c->in_len - from, "\r\n\r\n", 4);
        if (!end) {
            c->scan = c->in_len;
            if (c->in_len - c->in_off >= p->o.max_header_bytes) {
                gw_client_respond(c, 431, "request head over %zu bytes", p->o.max_header_bytes);
                return;
            }
            if (c->in_len == c->in_cap && c->in_off > 0 && c->in_locks == 0) {
                memmove(c->in, c->in + c->in_off, c->in_len - c->in_off);
                c->in_len -= c->in_off;
                c->scan -= c->in_off;
                c->in_off = 0;
            }
            break;
        }
        size_t head_len = (size_t)(end + 4 - (c->in + c->in_off));
        if (head_len > p->o.max_header_bytes) {
            gw_client_respond(c, 431, "request head over %zu bytes", p->o.max_header_bytes);
            return;
        }
        c->scan = c->in_off + head_len;
        c->too_many_headers = false;
        c->req_done = false;
        c->body_seen = 0;
        c->resp_started = false;
        c->retried = c->reuse_retried = false;
        c->xff_done = false;
        c->status = 0;
        c->resp_bytes = 0;
        client_handle_head(c, head_len);
        break;
    }
    case CS_BODY:
        if (c->inv)
            gw_bridge_client_bytes(c); /* a worker app's request body (bridge.c) */
        else
            client_pump_body(c);
        break;
    case CS_TUNNEL: gw_tunnel_client_bytes(c); break;
    default: break;
    }
    gw_client_read_update(c);
}

void gw_client_on_bytes(gw_client_t *c, size_t n)
{
    c->in_len += n;
    atomic_store_explicit(&c->t->m.bytes_in,
                          atomic_load_explicit(&c->t->m.bytes_in, memory_order_relaxed) + n,
                          memory_order_relaxed);
    if (c->lingering) {
        c->in_len = c->in_off = 0;
        return;
    }
    client_process(c);
}

void gw_client_on_eof(gw_client_t *c, int status)
{
    if (c->lingering || status != UV_EOF) {
        gw_client_close(c);
        return;
    }
    c->peer_eof = true;
    gw_client_read_update(c);
    switch (c->state) {
    case CS_HEAD:
        if (c->in_len > c->in_off && !c->resp_started)
            gw_client_respond(c, 400, "connection closed in the middle of a request head");
        else if (c->wpending == 0)
            gw_client_close(c);
        else
            c->linger_pending = true;
        break;
    case CS_BODY:
        if (!c->req_done)
            gw_client_close(c); /* the request can never complete */
        /* else: half-closed client still gets its response, then we close */
        break;
    case CS_TUNNEL: gw_tunnel_eof(c, true); break;
    default:
        if (c->wpending == 0)
            gw_client_close(c);
        break;
    }
}

/* ---- request to the backend ------------------------------------------------- */

/* The connection to the backend is up (reused, or just connected). */
static void client_start_send(gw_client_t *c)
{
    gw_upstream_t *u = c->up;
    gw_proxy_t *p = c->t->p;
    gw_client_set_deadline(c, p->o.backend_timeout_ms, TMO_BACKEND);
    gw_up_begin_response(u, c->is_head);
    gw_wslot_t *s = gw_slot_get(&u->slot, GW_SLOT_TO_UP, u);
    if (u->pp_len) {
        gw_slot_add(s, u->pp, u->pp_len);
        u->pp_len = 0;
    }
    gw_slot_add(s, c->hdr.data, c->hdr.len);
    c->head_sent = true;
    if (!c->upgrade && !c->req_done) {
        c->pump = s;
        s->src_c = c;
        size_t avail = c->in_len - c->in_off;
        if (avail) {
            size_t got = http_parser_execute(&c->parser, &req_settings, c->in + c->in_off, avail);
            c->in_off += got;
        }
        c->pump = NULL;
        enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
        if (e == HPE_PAUSED) {
            http_parser_pause(&c->parser, 0);
        } else if (e != HPE_OK) {
            s->src_c = NULL;
            gw_slot_free(s);
            if (c->body_too_big)
                gw_client_respond(c, 413, "request body over the limit of %llu bytes",
                                  (unsigned long long)c->body_limit);
            else
                gw_client_respond(c, 400, "malformed request body: %s", parse_error_text(e));
            return;
        }
    }
    gw_up_write(u, s);
}

/* More request body bytes may be forwarded (new bytes, or the previous
 * write finished). */
static void client_pump_body(gw_client_t *c)
{
    gw_upstream_t *u = c->up;
    if (!u || !u->connected || !c->head_sent || c->req_done || c->upgrade || u->slot.busy)
        return;
    size_t avail = c->in_len - c->in_off;
    if (avail == 0) {
        if (c->in_locks == 0)
            c->in_off = c->in_len = 0;
        return;
    }
    if (c->in_locks == 0 && c->in_off > 0 && c->in_len == c->in_cap) {
        memmove(c->in, c->in + c->in_off, avail);
        c->in_len = avail;
        c->in_off = 0;
    }
    gw_wslot_t *s = gw_slot_get(&u->slot, GW_SLOT_TO_UP, u);
    c->pump = s;
    s->src_c = c;
    size_t got = http_parser_execute(&c->parser, &req_settings, c->in + c->in_off, avail);
    c->pump = NULL;
    c->in_off += got;
    enum http_errno e = HTTP_PARSER_ERRNO(&c->parser);
    if (e == HPE_PAUSED) {
        http_parser_pause(&c->parser, 0);
    } else if (e != HPE_OK) {
        s->src_c = NULL;
        gw_slot_free(s);
        if (c->body_too_big)
            gw_client_respond(c, 413, "request body over the limit of %llu bytes",
                              (unsigned long long)c->body_limit);
        else
            gw_client_respond(c, 400, "malformed request body: %s", parse_error_text(e));
        return;
    }
    gw_client_set_deadline(c, c->t->p->o.backend_timeout_ms, TMO_BACKEND);
    if (s->n == 0) {
        s->src_c = NULL;
        gw_slot_free(s);
        return;
    }
    gw_up_write(u, s);
}

void gw_client_up_connected(gw_client_t *c, int status)
{
    if (status < 0) {
        client_up_failed(c, c->up, status, true);
        return;
    }
    if (c->state == CS_TUNNEL)
        gw_tunnel_connected(c);
    else
        client_start_send(c);
}

/* A write to the backend finished: the client buffer may be compacted and
 * more body sent. */
void gw_client_up_write_done(gw_client_t *c, int status)
{
    if (c->closing)
        return;
    if (status < 0) {
        /* a tunnel's bytes may have reached the backend: never retried */
        if (c->state == CS_TUNNEL)
            gw_client_close(c);
        else if (c->up)
            client_up_failed(c, c->up, status, false);
        return;
    }
    if (c->state == CS_BODY) {
        client_pump_body(c);
        gw_client_read_update(c);
    } else if (c->state == CS_TUNNEL) {
        gw_tunnel_client_bytes(c);
        gw_client_read_update(c);
    } else if (c->state == CS_HEAD) {
        client_process(c);
    }
}

/* The backend connection failed before a response byte: retry when the
 * request cannot have reached it, else answer 502/504. */
static void client_up_failed(gw_client_t *c, gw_upstream_t *u, int status, bool connect_failure)
{
    gw_proxy_t *p = c->t->p;
    if (c->state == CS_TUNNEL && c->route && c->route->kind == GW_ROUTE_TCP) {
        gw_tcp_connect_failed(c, u, status);
        return;
    }
    bool reused = u->reused;
    c->up = NULL;
    u->c = NULL;
    gw_up_close(u);
    if (c->resp_started) {
        gw_client_close(c);
        return;
    }
    if (connect_failure) {
        gw_backend_failed(c->b, gw_thread_now(c->t), p->o.eject_base_ms, p->o.eject_max_ms);
        if (!c->retried) {
            c->retried = true;
            gw_backend_t *old = c->b;
            gw_backend_ref(old);
            client_drop_backend(c);
            bool ok = client_pick(c, old);
            gw_backend_unref(old);
            if (ok) {
                atomic_store_explicit(&c->t->m.retries,
                                      atomic_load_explicit(&c->t->m.retries, memory_order_relaxed) +
                                          1,
                                      memory_order_relaxed);
                client_connect(c, true);
                return;
            }
        }
        if (status == UV_ETIMEDOUT)
            gw_client_respond(c, 504, "connecting to backend timed out");
        else
            gw_client_respond(c, 502, "could not connect to backend: %s", uv_strerror(status));
        return;
    }
    /* the backend dropped the connection before answering */
    if (reused && !c->req_body && c->idempotent && !c->reuse_retried && !c->upgrade) {
        c->reuse_retried = true;
        client_connect(c, true);
        return;
    }
    if (!reused)
        gw_backend_failed(c->b, gw_thread_now(c->t), p->o.eject_base_ms, p->o.eject_max_ms);
    gw_client_respond(c, 502, "backend %s closed the connection before answering",
                      c->b ? c->b->name : "?");
}

void gw_client_up_eof(gw_client_t *c, gw_upstream_t *u, int status)
{
    if (c->closing)
        return;
    if (c->state == CS_TUNNEL) {
        gw_tunnel_eof(c, false);
        return;
    }
    if (!u->got_bytes && u->in_len == u->in_off) {
        client_up_failed(c, u, status, false);
        return;
    }
    /* bytes still to relay: the end is handled once they are out (the
     * unlock path sees u->eof) */
    if (c->slot.busy)
        return;
    gw_client_up_bytes(c, u);
}

/* ---- the response ----------------------------------------------------------- */

static bool resp_has_header(const gw_upstream_t *u, const char *name, size_t nn)
{
    for (size_t i = 0; i < u->nhs; i++)
        if (u->hs[i].name_len == nn && strncasecmp(u->in + u->hs[i].name, name, nn) == 0)
            return true;
    return false;
}

static void build_response_head(gw_client_t *c, gw_upstream_t *u)
{
    http_parser *hp = &u->parser;
    buf_t *o = &c->rhead;
    buf_reset(o);
    char num[24];
    OUT(o, "HTTP/1.1 ");
    (void)buf_append(o, num, fmt_u64(num, hp->status_code, 10));
    OUT(o, " ");
    /* the reason phrase is informational: keep the backend's only when it
     * is clean text, never pass on control bytes */
    bool clean = u->status_len > 0;
    for (uint32_t i = 0; i < u->status_len && clean; i++) {
        unsigned char ch = (unsigned char)u->in[u->status_off + i];
        clean = ch == '\t' || (ch >= 0x20 && ch != 0x7f);
    }
    if (clean)
        (void)buf_append(o, u->in + u->status_off, u->status_len);
    else
        (void)buf_append_str(o, http_status_str((enum http_status)hp->status_code));
    OUT(o, "\r\n");
    const char *base = u->in;
    bool has_conn = false;
    for (size_t i = 0; i < u->nhs && !has_conn; i++)
        has_conn = NAME_IS(base + u->hs[i].name, u->hs[i].name_len, "connection");
    for (size_t i = 0; i < u->nhs; i++) {
        const char *n = base + u->hs[i].name;
        size_t nl = u->hs[i].name_len;
        if (gw_http_hop_by_hop(n, nl)) {
            if (!(c->upgrade && hp->status_code == 101 && NAME_IS(n, nl, "upgrade")))
                continue;
        } else if (has_conn && gw_http_named_by_connection(base, u->hs, u->nhs, n, nl)) {
            continue;
        }
        (void)buf_append(o, n, nl);
        OUT(o, ": ");
        (void)buf_append(o, base + u->hs[i].val, u->hs[i].val_len);
        OUT(o, "\r\n");
    }
    if (hp->status_code == 101) {
        OUT(o, "Connection: Upgrade\r\n");
    } else {
        if (c->resp_chunked)
            OUT(o, "Transfer-Encoding: chunked\r\n");
        if (c->resp_close)
            OUT(o, "Connection: close\r\n");
        else if (c->http_minor == 0)
            OUT(o, "Connection: keep-alive\r\n");
    }
    const gw_route_t *r = c->route;
    bool sts = false; /* a Strict-Transport-Security header is in (HTTPS only) */
    for (size_t i = 0; r && i < r->n_add_headers; i++) {
        const char *line = r->add_headers[i];
        const char *colon = strchr(line, ':');
        if (!colon)
            continue;
        if (c->tls && NAME_IS(line, (size_t)(colon - line), "strict-transport-security"))
            sts = true;
        if (resp_has_header(u, line, (size_t)(colon - line)))
            continue;
        (void)buf_append_str(o, line);
        OUT(o, "\r\n");
    }
    /* --hsts: a route's own header or the backend's wins */
    const char *hsts = c->t->p->hsts;
    if (c->tls && hsts[0] && !sts &&
        !resp_has_header(u, "strict-transport-security", sizeof("strict-transport-security") - 1)) {
        (void)buf_append_str(o, hsts);
        OUT(o, "\r\n");
    }
    OUT(o, "\r\n");
}

static int resp_on_message_begin(http_parser *p)
{
    gw_upstream_t *u = p->data;
    u->nhs = 0;
    u->cb_state = CB_NONE;
    u->status_len = 0;
    return 0;
}

static int resp_on_status(http_parser *p, const char *at, size_t n)
{
    gw_upstream_t *u = p->data;
    if (u->status_len == 0)
        u->status_off = (uint32_t)(at - u->in);
    u->status_len += (uint32_t)n;
    return 0;
}

static int resp_on_header_field(http_parser *p, const char *at, size_t n)
{
    gw_upstream_t *u = p->data;
    if (u->head_done)
        return 0; /* trailers */
    if (u->cb_state != CB_FIELD) {
        if (!hspan_open(&u->hs, &u->nhs, &u->hs_cap, (uint32_t)(at - u->in)))
            return 1;
        u->cb_state = CB_FIELD;
    }
    u->hs[u->nhs - 1].name_len += (uint32_t)n;
    return 0;
}

static int resp_on_header_value(http_parser *p, const char *at, size_t n)
{
    gw_upstream_t *u = p->data;
    if (u->head_done || u->nhs == 0)
        return 0;
    gw_hspan_t *h = &u->hs[u->nhs - 1];
    if (u->cb_state != CB_VALUE) {
        h->val = (uint32_t)(at - u->in);
        h->val_len = 0;
        u->cb_state = CB_VALUE;
    }
    h->val_len += (uint32_t)n;
    return 0;
}

static int resp_on_headers_complete(http_parser *p)
{
    gw_upstream_t *u = p->data;
    gw_client_t *c = u->c;
    unsigned st = p->status_code;
    if (st >= 100 && st < 200 && st != 101) {
        u->interim = true;
        return 1; /* 1xx has no body, whatever its headers say */
    }
    u->interim = false;
    /* http-parser is lenient; what we pass on to the client must be clean
     * (no response splitting, no header the client reads differently) */
    for (size_t i = 0; i < u->nhs; i++) {
        const char *v = u->in + u->hs[i].val;
        if (!gw_http_token_ok(u->in + u->hs[i].name, u->hs[i].name_len) ||
            memchr(v, '\0', u->hs[i].val_len) || memchr(v, '\r', u->hs[i].val_len) ||
            memchr(v, '\n', u->hs[i].val_len)) {
            c->bad_response = true;
            return -1;
        }
    }
    u->head_done = true;
    c->status = (int)st;
    if (st == 101) {
        if (!c->upgrade) {
            c->bad_response = true;
            return -1;
        }
        c->resp_close = false;
        build_response_head(c, u);
        gw_slot_add(c->pump, c->rhead.data, c->rhead.len);
        c->resp_started = true;
        c->tunnel_next = true;
        return 0;
    }
    c->resp_nobody = c->is_head || st == 204 || st == 304;
    bool chunked = (p->flags & F_CHUNKED) != 0;
    bool has_cl = (p->flags & F_CONTENTLENGTH) != 0;
    c->resp_chunked = false;
    c->resp_eof_body = false;
    c->resp_close = !c->keep_alive || c->t->draining || !c->req_done;
    if (!c->resp_nobody) {
        if (chunked) {
            if (c->http_minor >= 1)
                c->resp_chunked = true;
            else
                c->resp_close = true; /* HTTP/1.0: de-chunked, close-delimited */
        } else if (!has_cl) {
            c->resp_eof_body = true;
            c->resp_close = true;
        }
    }
    build_response_head(c, u);
    gw_slot_add(c->pump, c->rhead.data, c->rhead.len);
    c->resp_started = true;
    if (atomic_load_explicit(&u->b->fails, memory_order_relaxed))
        gw_backend_succeeded(u->b);
    return c->is_head ? 1 : 0;
}

static int resp_on_body(http_parser *p, const char *at, size_t n)
{
    gw_upstream_t *u = p->data;
    gw_client_t *c = u->c;
    gw_wslot_t *s = c->pump;
    if (u->interim)
        return 0;
    c->resp_bytes += n;
    if (c->resp_chunked) {
        char *h = s->hex[s->nhex++];
        size_t hn = fmt_u64(h, n, 16);
        h[hn++] = '\r';
        h[hn++] = '\n';
        gw_slot_add(s, h, hn);
        gw_slot_add(s, at, n);
        gw_slot_add(s, crlf, 2);
    } else {
        gw_slot_add(s, at, n);
    }
    if (gw_slot_full(s, 4))
        http_parser_pause(p, 1);
    return 0;
}

static int resp_on_message_complete(http_parser *p)
{
    gw_upstream_t *u = p->data;
    gw_client_t *c = u->c;
    if (u->interim) {
        u->interim = false;
        if (p->status_code == 100 && c->http_minor >= 1 && !c->resp_started)
            gw_slot_add(c->pump, continue_100, sizeof(continue_100) - 1);
        u->head_done = false;
        return 0;
    }
    if (c->resp_chunked)
        gw_slot_add(c->pump, chunk_end, sizeof(chunk_end) - 1);
    u->keep = http_should_keep_alive(p) != 0;
    u->resp_done = true;
    http_parser_pause(p, 1);
    return 0;
}

const http_parser_settings gw_resp_settings = {
    .on_message_begin = resp_on_message_begin,
    .on_status = resp_on_status,
    .on_header_field = resp_on_header_field,
    .on_header_value = resp_on_header_value,
    .on_headers_complete = resp_on_headers_complete,
    .on_body = resp_on_body,
    .on_message_complete = resp_on_message_complete,
};

/* Relay what the backend sent: parse it in place and write head and body
 * pieces to the client in one write. Runs only while the client has no
 * write of ours pending (the upstream is not read meanwhile). */
void gw_client_up_bytes(gw_client_t *c, gw_upstream_t *u)
{
    if (c->closing || c->slot.busy)
        return;
    if (c->state == CS_TUNNEL) {
        gw_tunnel_up_bytes(c, u);
        return;
    }
    size_t avail = u->in_len - u->in_off;
    if (avail == 0 && !u->eof)
        return;
    if (avail)
        u->got_bytes = true;
    gw_wslot_t *s = gw_slot_get(&c->slot, GW_SLOT_TO_CLIENT, c);
    s->src_u = u;
    c->pump = s;
    c->bad_response = false;
    size_t got = 0;
    if (avail)
        got = http_parser_execute(&u->parser, &gw_resp_settings, u->in + u->in_off, avail);
    u->in_off += got;
    enum http_errno e = HTTP_PARSER_ERRNO(&u->parser);
    /* a clean EOF after everything was parsed ends a close-delimited body
     * (http-parser is told with a zero-length call); a reset never does */
    if (e == HPE_OK && u->eof && !u->reset && u->in_off == u->in_len && !u->resp_done &&
        !c->tunnel_next) {
        http_parser_execute(&u->parser, &gw_resp_settings, NULL, 0);
        e = HTTP_PARSER_ERRNO(&u->parser);
    }
    c->pump = NULL;
    if (e == HPE_PAUSED) {
        http_parser_pause(&u->parser, 0);
    } else if (e != HPE_OK || (u->eof && !u->resp_done && !c->tunnel_next)) {
        s->src_u = NULL;
        if (!c->resp_started || (s->n > 0 && !u->head_done)) {
            gw_slot_free(s);
            gw_backend_failed(c->b, gw_thread_now(c->t), c->t->p->o.eject_base_ms,
                              c->t->p->o.eject_max_ms);
            if (u->eof)
                gw_client_respond(c, 502, "backend %s closed the connection mid-response",
                                  c->b ? c->b->name : "?");
            else
                gw_client_respond(c, 502, "invalid response from backend %s: %s",
                                  c->b ? c->b->name : "?", http_errno_name(e));
            return;
        }
        /* mid-body: send what is good, then cut the client off */
        s->close_after = true;
        if (s->n)
            gw_client_write(c, s);
        else
            gw_slot_free(s);
        c->resp_close = true;
        gw_client_close(c);
        return;
    }
    if (u->head_done || u->resp_done)
        gw_client_set_deadline(c, c->t->p->o.backend_timeout_ms, TMO_BACKEND);
    if (!u->head_done && !u->resp_done && u->in_len == GW_UP_IN_BYTES) {
        /* head does not fit the buffer */
        s->src_u = NULL;
        gw_slot_free(s);
        gw_client_respond(c, 502, "backend %s sent a response head over %u bytes",
                          c->b ? c->b->name : "?", GW_UP_IN_BYTES);
        return;
    }
    if (c->tunnel_next) {
        c->tunnel_next = false;
        gw_tunnel_begin(c, u, s);
        return;
    }
    if (s->n) {
        /* the response's last bytes on a connection closing after it */
        if (u->resp_done && c->resp_close)
            s->close_after = true;
        gw_client_write(c, s);
    } else {
        s->src_u = NULL;
        gw_slot_free(s);
        /* nothing went out (framing bytes only): no write completion
         * will make room, so make it here */
        if (u->in_locks == 0 && u->head_done && u->in_off > 0) {
            size_t left = u->in_len - u->in_off;
            memmove(u->in, u->in + u->in_off, left);
            u->in_len = left;
            u->in_off = 0;
        }
    }
    if (u->resp_done)
        client_finish_response(c);
    else
        gw_up_read_update(u);
}

/* A client write out of u's buffer completed: read/relay more. */
void gw_client_up_unlocked(gw_client_t *c, gw_upstream_t *u)
{
    if (c->state == CS_TUNNEL) {
        gw_tunnel_up_bytes(c, u);
        gw_up_read_update(u);
        return;
    }
    if (u->in_locks == 0 && u->in_off > 0 && u->head_done) {
        size_t left = u->in_len - u->in_off;
        memmove(u->in, u->in + u->in_off, left);
        u->in_len = left;
        u->in_off = 0;
    }
    if (u->in_len > u->in_off || u->eof)
        gw_client_up_bytes(c, u);
    else
        gw_up_read_update(u);
}

/* The response is fully queued to the client (ours or the backend's). */
static void client_finish_response(gw_client_t *c)
{
    gw_client_end_request(c);
    if (c->closing)
        return;
    if (c->resp_close) {
        client_linger_close(c);
        return;
    }
    c->state = CS_HEAD;
    gw_client_set_deadline(c, c->t->p->o.idle_timeout_ms, TMO_IDLE);
    if (c->in_len > c->in_off)
        client_process(c);
    else
        gw_client_read_update(c);
}

void gw_client_finish_response(gw_client_t *c)
{
    client_finish_response(c);
}

/* Account the request and let go of what it held. */
void gw_client_end_request(gw_client_t *c)
{
    gw_thread_t *t = c->t;
    if (c->inv)
        gw_bridge_detach(c); /* the worker bridge lets go of its invocation */
    if (c->status && !c->logged) {
        gw_metrics_request(t, c);
        if (t->p->o.access_log)
            gw_access_log(t, c);
    }
    c->logged = false;
    if (c->up) {
        gw_upstream_t *u = c->up;
        c->up = NULL;
        /* a PROXY protocol connection speaks for one client: never pooled */
        bool reusable = u->resp_done && c->req_done && gw_up_keep_ok(u) && !c->upgrade &&
                        c->state != CS_TUNNEL && !t->p->o.proxy_protocol &&
                        (c->sref == t->cur || gw_snapshot_has_backend(t->cur->s, u->b));
        u->c = NULL;
        gw_up_release(u, reusable);
    }
    client_drop_backend(c);
    if (c->sref) {
        gw_snapref_t *r = c->sref;
        c->sref = NULL;
        gw_thread_snap_release(t, r);
    }
    c->route = NULL;
    c->pool = NULL;
    c->status = 0;
}

/* ---- accept ---------------------------------------------------------------- */

gw_client_t *gw_client_new(gw_thread_t *t)
{
    gw_proxy_t *p = t->p;
    gw_client_t *c = t->spare;
    if (c) {
        t->spare = c->next;
        t->n_spare--;
        char *in = c->in;
        size_t in_cap = c->in_cap;
        buf_t hdr = c->hdr, rhead = c->rhead, err = c->err;
        /* only the head of the struct needs clearing: the slots' iovec
         * arrays are written before they are read */
        memset(c, 0, offsetof(gw_client_t, slot));
        c->in = in;
        c->in_cap = in_cap;
        c->hdr = hdr;
        c->rhead = rhead;
        c->err = err;
        buf_reset(&c->hdr);
        buf_reset(&c->rhead);
        buf_reset(&c->err);
        c->slot.busy = false;
        c->d = NULL;
    } else {
        c = xcalloc(1, sizeof(*c));
        c->in_cap = p->o.max_header_bytes + 1024;
        if (c->in_cap < 16384)
            c->in_cap = 16384;
        c->in = xmalloc(c->in_cap);
        buf_init(&c->hdr, p->o.max_header_bytes + 4096);
        buf_init(&c->rhead, GW_UP_IN_BYTES * 2);
        buf_init(&c->err, 4096);
    }
    c->t = t;
    c->fd = -1;
    c->slot.dir = GW_SLOT_TO_CLIENT;
    c->slot.owner = c;
    c->tcp.data = c;
    c->timer.data = c;
    c->next = t->clients;
    if (t->clients)
        t->clients->prev = c;
    t->clients = c;
    t->n_clients++;
    atomic_store_explicit(&t->m.conns_active, t->n_clients, memory_order_relaxed);
    atomic_store_explicit(&t->m.conns_total,
                          atomic_load_explicit(&t->m.conns_total, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    memcpy(c->addr, "0.0.0.0", 8);
    return c;
}

static void addr_text(const struct sockaddr_storage *ss, char *out, size_t cap, int *port)
{
    if (ss->ss_family == AF_INET) {
        /* by hand: uv_ip4_name formats with snprintf, a visible cost
         * when every request is a new connection */
        const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
        const unsigned char *q = (const unsigned char *)&a->sin_addr.s_addr;
        char tmp[16];
        size_t n = 0;
        for (int i = 0; i < 4; i++) {
            if (i)
                tmp[n++] = '.';
            n += fmt_u64(tmp + n, q[i], 10);
        }
        if (n < cap) {
            memcpy(out, tmp, n);
            out[n] = '\0';
        }
        if (port)
            *port = ntohs(a->sin_port);
    } else if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
        uv_ip6_name(a, out, cap);
        if (port)
            *port = ntohs(a->sin6_port);
    }
}

void gw_client_accept(gw_thread_t *t, int fd, const struct sockaddr_storage *peer, bool internal,
                      int port, bool tls)
{
    gw_proxy_t *p = t->p;
    gw_client_t *c = gw_client_new(t);
    uv_timer_init(&t->loop, &c->timer);
    c->open_handles = 1; /* the socket's handle comes later if needed */
    c->fd = fd;
    addr_text(peer, c->addr, sizeof(c->addr), &c->peer_port);
    c->internal = internal;
    c->port = port;
    if (tls) {
        gw_tmetrics_t *m = &t->m;
        atomic_store_explicit(&m->tls_conns,
                              atomic_load_explicit(&m->tls_conns, memory_order_relaxed) + 1,
                              memory_order_relaxed);
        if (t->n_clients > t->max_clients) {
            /* an answer would need a handshake first: just close */
            gw_client_close(c);
            return;
        }
        /* the head timeout starts now, so it covers the handshake too */
        c->tls = gw_tls_conn_new(p->o.tls);
        c->state = CS_HEAD;
        gw_client_set_deadline(c, p->o.header_timeout_ms, TMO_HEADER);
        if (client_attach(c))
            gw_client_read_update(c);
        return;
    }
    if (t->n_clients > t->max_clients) {
        c->keep_alive = false;
        c->state = CS_HEAD;
        gw_client_respond(c, 503, "too many connections");
        return;
    }
    if (internal) {
        gw_snapshot_t *s = t->cur->s;
        const gw_route_t *r = s ? gw_snapshot_internal_route(s, port) : NULL;
        if (r && r->kind == GW_ROUTE_TCP) {
            gw_tcp_session_start(c, r);
            gw_client_read_update(c);
            return;
        }
    }
    c->state = CS_HEAD;
    gw_client_set_deadline(c, p->o.header_timeout_ms, TMO_HEADER);
    /* The request usually arrived with the connection: read it now, before
     * registering with epoll at all (see gw_client_read_update). */
    ssize_t n = recv(fd, c->in, c->in_cap, 0);
    if (n > 0) {
        gw_client_on_bytes(c, (size_t)n);
    } else if (n == 0) {
        gw_client_close(c);
    } else {
        gw_client_read_update(c);
    }
}

/* Draining: an idle keep-alive connection closes now; a busy one gets
 * Connection: close on its current response (t->draining is seen there). */
void gw_client_drain(gw_client_t *c)
{
    if (c->closing || c->lingering)
        return;
    if (c->state == CS_HEAD && c->in_len == c->in_off && c->wpending == 0)
        gw_client_close(c);
    else
        c->keep_alive = false;
}
