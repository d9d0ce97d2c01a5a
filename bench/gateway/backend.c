/* The backend every arm of bench/gateway talks to: a keep-alive HTTP/1.1
 * server that answers any request with the same small 200.
 *
 * Why not nginx `return 200`: the box has two cores shared by wrk, the proxy
 * under test and the backend, so whatever the backend spends per request is
 * taken from the proxy. This one does the least a correct keep-alive server
 * can (find the end of the head, look for Connection/Content-Length, one
 * write per batch of requests), so the figures measure the proxies; nginx as
 * a backend would also share its code and tuning with the nginx arm.
 *
 *   backend [-t THREADS] PORT     (listens on 127.0.0.1:PORT)
 *
 * One epoll loop per thread, each with its own SO_REUSEPORT listener, so
 * the kernel spreads connections and no lock is shared. Pipelined requests
 * are answered in order; "Connection: close" (or HTTP/1.0 without
 * keep-alive) closes after the response; a request body announced by
 * Content-Length is read and dropped (chunked bodies are refused, nothing in
 * the bench sends one). Each response names the port in X-Backend so a
 * human can see where a request went. On SIGTERM/SIGINT it prints
 * "backend PORT requests N" and exits. Standalone on purpose (no drover
 * code): it must not change when drover does. */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define IN_MAX      16384 /* one request head must fit; bigger heads get 431 */
#define OUT_MAX     65536 /* pending responses; reading pauses when this fills */
#define THREADS_MAX 64

typedef struct conn {
    int fd;
    size_t in_len;
    size_t out_len;
    size_t out_off;
    uint64_t skip; /* body bytes still to drop */
    int closing;   /* close once out is written */
    char in[IN_MAX];
    char out[OUT_MAX];
} conn_t;

static int g_port;
static char g_resp_ka[256];
static char g_resp_close[256];
static size_t g_resp_ka_len, g_resp_close_len;
static atomic_ullong g_requests;

_Noreturn static void die(const char *what)
{
    fprintf(stderr, "backend: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* What serve() needs from one request head [head, end) (end just past the
 * last header's CRLF). One pass over the lines, comparing only lines whose
 * first letter can start a wanted name, so a typical head costs a few
 * hundred byte comparisons. */
typedef struct head_info {
    int close_it;  /* "Connection: close", or HTTP/1.0 without keep-alive */
    int chunked;   /* any Transfer-Encoding */
    uint64_t body; /* Content-Length */
} head_info_t;

static int has_token(const char *v, const char *e, const char *tok)
{
    size_t n = strlen(tok);
    for (; v + n <= e; v++) {
        if (strncasecmp(v, tok, n) == 0)
            return 1;
    }
    return 0;
}

static head_info_t head_parse(const char *head, const char *end)
{
    head_info_t hi = {0};
    const char *line = memchr(head, '\n', (size_t)(end - head));
    int http10 = line && line - head >= 9 && memcmp(line - 9, "HTTP/1.0", 8) == 0;
    int ka = 0, cl = 0;
    while (line && ++line < end) {
        const char *eol = memchr(line, '\r', (size_t)(end - line));
        if (!eol)
            break;
        size_t len = (size_t)(eol - line);
        const char *colon = memchr(line, ':', len);
        if (colon) {
            size_t nlen = (size_t)(colon - line);
            const char *v = colon + 1;
            char c0 = (char)(line[0] | 0x20);
            if (c0 == 'c' && nlen == 10 && strncasecmp(line, "connection", 10) == 0) {
                cl |= has_token(v, eol, "close");
                ka |= has_token(v, eol, "keep-alive");
            } else if (c0 == 'c' && nlen == 14 && strncasecmp(line, "content-length", 14) == 0) {
                hi.body = strtoull(v, NULL, 10);
            } else if (c0 == 't' && nlen == 17 && strncasecmp(line, "transfer-encoding", 17) == 0) {
                hi.chunked = 1;
            }
        }
        line = eol + 1;
    }
    hi.close_it = cl || (http10 && !ka);
    return hi;
}

static void conn_free(int ep, conn_t *c)
{
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

static int out_add(conn_t *c, const char *s, size_t n)
{
    if (c->out_len + n > OUT_MAX)
        return -1;
    memcpy(c->out + c->out_len, s, n);
    c->out_len += n;
    return 0;
}

/* Answers every complete request in c->in. Returns 0 when more input may be
 * read, 1 when the output is full (stop reading until it drains), -1 on a
 * request that cannot be served (the connection closes after the reply). */
static int serve(conn_t *c)
{
    size_t off = 0;
    int rc = 0;
    while (off < c->in_len && !c->closing) {
        if (c->skip) {
            size_t n = c->in_len - off < c->skip ? c->in_len - off : (size_t)c->skip;
            off += n;
            c->skip -= n;
            continue;
        }
        const char *head = c->in + off;
        const char *end = memmem(head, c->in_len - off, "\r\n\r\n", 4);
        if (!end) {
            if (c->in_len - off == IN_MAX) {
                static const char r431[] = "HTTP/1.1 431 Request Header Fields Too Large\r\n"
                                           "Content-Length: 0\r\nConnection: close\r\n\r\n";
                out_add(c, r431, sizeof r431 - 1);
                c->closing = 1;
                rc = -1;
            }
            break;
        }
        if (c->out_len + g_resp_close_len > OUT_MAX) {
            rc = 1;
            break;
        }
        end += 2; /* keep the last header's CRLF inside [head, end) */
        head_info_t hi = head_parse(head, end);
        if (hi.chunked) {
            static const char r501[] = "HTTP/1.1 501 Not Implemented\r\n"
                                       "Content-Length: 0\r\nConnection: close\r\n\r\n";
            out_add(c, r501, sizeof r501 - 1);
            c->closing = 1;
            rc = -1;
            break;
        }
        c->skip = hi.body;
        if (hi.close_it)
            out_add(c, g_resp_close, g_resp_close_len);
        else
            out_add(c, g_resp_ka, g_resp_ka_len);
        atomic_fetch_add_explicit(&g_requests, 1, memory_order_relaxed);
        c->closing = hi.close_it;
        off = (size_t)(end - c->in) + 2;
    }
    memmove(c->in, c->in + off, c->in_len - off);
    c->in_len -= off;
    return rc;
}

/* Writes what is pending. Returns 1 when everything went, 0 when the socket
 * is full (wait for EPOLLOUT), -1 on error. */
static int flush(conn_t *c)
{
    while (c->out_off < c->out_len) {
        ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return 0;
        if (n <= 0)
            return -1;
        c->out_off += (size_t)n;
    }
    c->out_off = c->out_len = 0;
    return 1;
}

/* Reads, answers and writes until the socket would block; frees the
 * connection when it ends. */
static void on_conn(int ep, conn_t *c, uint32_t events)
{
    if (events & (EPOLLERR | EPOLLHUP) && !(events & EPOLLIN)) {
        conn_free(ep, c);
        return;
    }
    for (;;) {
        int f = flush(c);
        if (f < 0)
            goto gone;
        if (f == 0) {
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        if (c->closing)
            goto gone;
        if (c->in_len > 0) {
            serve(c); /* requests left over when the output filled up */
            if (c->out_len > 0)
                continue;
        }
        ssize_t n = recv(c->fd, c->in + c->in_len, IN_MAX - c->in_len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        if (n <= 0)
            goto gone;
        c->in_len += (size_t)n;
    }
gone:
    conn_free(ep, c);
}

static int listener(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (fd < 0)
        die("socket");
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one))
        die("SO_REUSEPORT");
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&a, sizeof a))
        die("bind");
    if (listen(fd, 4096))
        die("listen");
    return fd;
}

static void *loop(void *arg)
{
    int lfd = (int)(intptr_t)arg;
    int ep = epoll_create1(0);
    if (ep < 0)
        die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event evs[256];
    for (;;) {
        int n = epoll_wait(ep, evs, 256, -1);
        for (int i = 0; i < n; i++) {
            if (evs[i].data.ptr) {
                on_conn(ep, evs[i].data.ptr, evs[i].events);
                continue;
            }
            for (;;) {
                int fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (fd < 0)
                    break;
                int one = 1;
                setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                conn_t *c = malloc(sizeof *c);
                if (!c) {
                    close(fd);
                    continue;
                }
                c->fd = fd;
                c->in_len = c->out_len = c->out_off = 0;
                c->skip = 0;
                c->closing = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = c};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev)) {
                    close(fd);
                    free(c);
                }
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv)
{
    int threads = 1;
    int opt;
    while ((opt = getopt(argc, argv, "t:")) != -1) {
        if (opt == 't')
            threads = atoi(optarg);
        else
            return fprintf(stderr, "usage: backend [-t THREADS] PORT\n"), 2;
    }
    if (optind != argc - 1 || threads < 1 || threads > THREADS_MAX)
        return fprintf(stderr, "usage: backend [-t THREADS] PORT\n"), 2;
    g_port = atoi(argv[optind]);
    static const char body[] = "hello, world\n";
    g_resp_ka_len = (size_t)snprintf(g_resp_ka, sizeof g_resp_ka,
                                     "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                     "X-Backend: %d\r\nContent-Length: %zu\r\n\r\n%s",
                                     g_port, sizeof body - 1, body);
    g_resp_close_len = (size_t)snprintf(g_resp_close, sizeof g_resp_close,
                                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                                        "X-Backend: %d\r\nContent-Length: %zu\r\n"
                                        "Connection: close\r\n\r\n%s",
                                        g_port, sizeof body - 1, body);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL); /* workers inherit it; main waits below */
    for (int i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, loop, (void *)(intptr_t)listener()))
            die("pthread_create");
    }
    int sig;
    sigwait(&set, &sig);
    printf("backend %d requests %llu\n", g_port, (unsigned long long)atomic_load(&g_requests));
    fflush(stdout);
    _exit(0);
}
