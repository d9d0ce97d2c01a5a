/* `drover invoke APP EVENT [DATA|-]`: resolve APP at a locator (as
 * `drover resolve` does), connect to one node's invocation service,
 * enqueue EVENT, stream DATA (or stdin) as write chunks, close, and print
 * the reply's chunks to stdout as they arrive. The tool for trying a
 * worker app without the gateway, and for scripts feeding it. */
#include "cli/invoke.h"

#include "cli/cli.h"
#include "core/alloc.h"
#include "core/str.h"
#include "locator/locator.h"

#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* The same default as `drover resolve` (src/cli/resolve.c). */
#define INVOKE_DEFAULT_LOCATOR    "127.0.0.1:10053"
#define INVOKE_LOCATOR_TIMEOUT_MS 10000L
#define INVOKE_CONNECT_TIMEOUT_MS 5000
/* stdin is read and sent in pieces of this size; no more than
 * INVOKE_OUT_MAX waits to be sent (stdin is not read meanwhile). */
#define INVOKE_STDIN_CHUNK (64u * 1024)
#define INVOKE_OUT_MAX     ((size_t)4 << 20)
/* With --timeout the engine answers [3, 110]; this much later we stop
 * waiting ourselves. */
#define INVOKE_GRACE_MS 5000

/* ---- pure parts --------------------------------------------------------------- */

const char *cli_invoke_category_name(uint64_t category)
{
    switch (category) {
    case RPC_ECAT_PROTOCOL: return "protocol";
    case RPC_ECAT_LOCATOR: return "locator";
    case RPC_ECAT_ENGINE: return "engine";
    case RPC_ECAT_WORKER: return "worker";
    case RPC_ECAT_APP: return "app";
    default: return "unknown";
    }
}

int cli_invoke_exit_code(uint64_t category, uint64_t code)
{
    if (category == RPC_ECAT_ENGINE && code == EAGAIN)
        return CLI_INVOKE_EXIT_QUEUE_FULL;
    if (category == RPC_ECAT_ENGINE && code == ETIMEDOUT)
        return CLI_INVOKE_EXIT_TIMEOUT;
    return CLI_EXIT_ERROR;
}

int cli_invoke_encode_enqueue(buf_t *out, uint64_t ch, const char *event, long timeout_ms,
                              const char *const *headers, size_t nheaders)
{
    if (timeout_ms <= 0 && !nheaders)
        return rpc_encode(out, ch, RPC_INVOKE, "s", event);
    for (size_t i = 0; i < nheaders; i++) {
        const char *eq = strchr(headers[i], '=');
        if (!eq || eq == headers[i] || eq - headers[i] > 255)
            return -EINVAL;
    }
    char ms[24];
    int n = snprintf(ms, sizeof(ms), "%ld", timeout_ms);
    rpc_enc_t e;
    rpc_enc_begin(&e, out, ch, RPC_INVOKE, 1, (uint32_t)(nheaders + (timeout_ms > 0)));
    msgpack_pack_str_with_body(&e.pk, event, strlen(event));
    if (timeout_ms > 0)
        rpc_enc_header(&e, "timeout", ms, (size_t)n);
    for (size_t i = 0; i < nheaders; i++) {
        const char *eq = strchr(headers[i], '=');
        char name[256];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - headers[i]), headers[i]);
        rpc_enc_header(&e, name, eq + 1, strlen(eq + 1));
    }
    return rpc_enc_end(&e);
}

int cli_invoke_encode_data(buf_t *out, uint64_t ch, const void *data, size_t len)
{
    size_t at = out->len;
    const char *p = data;
    while (len) {
        size_t k = len < RPC_CHUNK_MAX ? len : RPC_CHUNK_MAX;
        int rc = rpc_encode(out, ch, RPC_WRITE, "b", p, k);
        if (rc < 0) {
            if (out->data) {
                out->len = at;
                out->data[at] = '\0';
            }
            return rc;
        }
        p += k;
        len -= k;
    }
    return 0;
}

void cli_invoke_rx_init(cli_invoke_rx_t *rx, uint64_t ch)
{
    memset(rx, 0, sizeof(*rx));
    rpc_decoder_init(&rx->dec, RPC_MAX_MESSAGE_DEFAULT);
    rx->ch = ch;
}

void cli_invoke_rx_free(cli_invoke_rx_t *rx)
{
    rpc_decoder_free(&rx->dec);
}

/* The error reply [[category, code], message] as the one line we print;
 * the service's text is kept printable. */
static void rx_error(cli_invoke_rx_t *rx, const rpc_msg_t *m)
{
    uint64_t cat = 0, code = 0;
    const msgpack_object *cc = m->nargs >= 1 ? &m->args[0] : NULL;
    if (cc && cc->type == MSGPACK_OBJECT_ARRAY && cc->via.array.size >= 2 &&
        cc->via.array.ptr[0].type == MSGPACK_OBJECT_POSITIVE_INTEGER &&
        cc->via.array.ptr[1].type == MSGPACK_OBJECT_POSITIVE_INTEGER) {
        cat = cc->via.array.ptr[0].via.u64;
        code = cc->via.array.ptr[1].via.u64;
    }
    const char *msg = "";
    size_t len = 0;
    if (m->nargs < 2 || rpc_arg_bytes(m, 1, &msg, &len, NULL) < 0) {
        msg = "";
        len = 0;
    }
    if (len > 400)
        len = 400;
    char text[401];
    for (size_t i = 0; i < len; i++)
        text[i] = ((unsigned char)msg[i] < 0x20 || msg[i] == 0x7f) ? '?' : msg[i];
    text[len] = '\0';
    snprintf(rx->error, sizeof(rx->error), "%s error %llu: %s", cli_invoke_category_name(cat),
             (unsigned long long)code, len ? text : "(no message)");
    rx->exit_code = cli_invoke_exit_code(cat, code);
}

int cli_invoke_rx_feed(cli_invoke_rx_t *rx, const void *bytes, size_t n, FILE *out, err_t *err)
{
    if (rx->done)
        return 1;
    (void)rpc_decoder_feed(&rx->dec, bytes, n);
    rpc_msg_t m;
    int rc;
    while ((rc = rpc_decoder_next(&rx->dec, &m, err)) == 1) {
        if (m.channel != rx->ch)
            return err_set(err, -EPROTO, "reply on channel %llu, expected %llu",
                           (unsigned long long)m.channel, (unsigned long long)rx->ch);
        if (m.type == RPC_WRITE) {
            const char *p;
            size_t len;
            if (rpc_args_count(&m, 1, 1, err) < 0 || rpc_arg_bytes(&m, 0, &p, &len, err) < 0) {
                (void)err_wrap(err, -EPROTO, "write");
                return -EPROTO;
            }
            if (len && fwrite(p, 1, len, out) != len)
                return err_set(err, -EIO, "writing the reply: %s", strerror(errno));
            fflush(out);
        } else if (m.type == RPC_ERROR) {
            rx_error(rx, &m);
            rx->done = true;
            return 1;
        } else if (m.type == RPC_CLOSE) {
            rx->exit_code = CLI_EXIT_OK;
            rx->done = true;
            return 1;
        } else {
            return err_set(err, -EPROTO, "reply of unknown type %llu", (unsigned long long)m.type);
        }
    }
    return rc < 0 ? -EPROTO : 0;
}

/* ---- the connection ------------------------------------------------------------ */

static uint64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Non-blocking connect with a bounded wait; the socket stays non-blocking
 * for the poll loop. */
static int connect_to(const char *host, int port, err_t *err)
{
    char ps[16];
    snprintf(ps, sizeof(ps), "%d", port);
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int g = getaddrinfo(host, ps, &hints, &res);
    if (g != 0) {
        err_set(err, -EHOSTUNREACH, "%s: %s", host, gai_strerror(g));
        return -EHOSTUNREACH;
    }
    int rc = -ECONNREFUSED;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
        if (fd < 0) {
            rc = -errno;
            continue;
        }
        if (connect(fd, a->ai_addr, a->ai_addrlen) < 0 && errno != EINPROGRESS) {
            rc = -errno;
            close(fd);
            continue;
        }
        struct pollfd pf = {.fd = fd, .events = POLLOUT};
        int pr = poll(&pf, 1, INVOKE_CONNECT_TIMEOUT_MS);
        int soerr = 0;
        socklen_t sl = sizeof(soerr);
        if (pr == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) == 0 && soerr == 0) {
            freeaddrinfo(res);
            return fd;
        }
        rc = pr == 0 ? -ETIMEDOUT : -(soerr ? soerr : errno);
        close(fd);
    }
    freeaddrinfo(res);
    err_set(err, rc, "connect to %s:%d: %s", host, port, strerror(-rc));
    return rc;
}

typedef struct invoke_io {
    int fd;
    int in_fd; /* stdin while streaming it; -1 otherwise */
    buf_t out; /* messages not yet sent */
    cli_invoke_rx_t rx;
    uint64_t deadline; /* 0: none */
} invoke_io_t;

/* Send what is queued, read replies, and stream stdin, until the reply
 * ended. Returns 0 (rx says how the reply ended) or a negative errno. */
static int invoke_loop(invoke_io_t *io, FILE *stdout_f, err_t *err)
{
    char *rbuf = xmalloc(INVOKE_STDIN_CHUNK);
    int rc = 0;
    bool stdin_eof = io->in_fd < 0;
    while (!io->rx.done) {
        struct pollfd pf[2];
        int n = 0;
        pf[n++] = (struct pollfd){.fd = io->fd, .events = POLLIN | (io->out.len ? POLLOUT : 0)};
        bool want_in = !stdin_eof && io->out.len < INVOKE_OUT_MAX;
        if (want_in)
            pf[n++] = (struct pollfd){.fd = io->in_fd, .events = POLLIN};
        int wait = -1;
        if (io->deadline) {
            uint64_t t = now_ms();
            if (t >= io->deadline) {
                rc = err_set(err, -ETIMEDOUT, "no reply in time");
                break;
            }
            wait = (int)(io->deadline - t);
        }
        int pr = poll(pf, (nfds_t)n, wait);
        if (pr < 0 && errno == EINTR)
            continue;
        if (pr < 0) {
            rc = err_set(err, -errno, "poll: %s", strerror(errno));
            break;
        }
        if (pr == 0)
            continue;
        if (pf[0].revents & POLLOUT) {
            ssize_t w = send(io->fd, io->out.data, io->out.len, MSG_NOSIGNAL);
            if (w < 0 && errno != EAGAIN && errno != EINTR) {
                rc = err_set(err, -errno, "send: %s", strerror(errno));
                break;
            }
            if (w > 0)
                buf_consume(&io->out, (size_t)w);
        }
        if (pf[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t r = recv(io->fd, rbuf, INVOKE_STDIN_CHUNK, 0);
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                rc = err_set(err, -errno, "recv: %s", strerror(errno));
                break;
            }
            if (r == 0) {
                rc = err_set(err, -ECONNRESET, "the invocation service closed the connection");
                break;
            }
            if (r > 0 && (rc = cli_invoke_rx_feed(&io->rx, rbuf, (size_t)r, stdout_f, err)) < 0)
                break;
            rc = 0;
        }
        if (want_in && (pf[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t r = read(io->in_fd, rbuf, INVOKE_STDIN_CHUNK);
            if (r < 0 && errno != EAGAIN && errno != EINTR) {
                rc = err_set(err, -errno, "reading stdin: %s", strerror(errno));
                break;
            }
            if (r > 0 && cli_invoke_encode_data(&io->out, io->rx.ch, rbuf, (size_t)r) < 0) {
                rc = err_set(err, -ENOBUFS, "output queue full");
                break;
            }
            if (r == 0) {
                stdin_eof = true;
                if (rpc_encode(&io->out, io->rx.ch, RPC_CLOSE, "") < 0) {
                    rc = err_set(err, -ENOBUFS, "output queue full");
                    break;
                }
            }
        }
    }
    free(rbuf);
    return rc;
}

int cli_cmd_invoke(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "invoke",
        "invoke APP EVENT [DATA|-] [--timeout MS] [--header NAME=VALUE]... [--locator HOST:PORT]",
        "Invoke EVENT of the worker app APP once: DATA (or stdin with -, streamed; nothing when "
        "absent) is the request, the reply's chunks go to stdout as they arrive. APP is "
        "resolved at the locator --locator, else $DROVER_LOCATOR, else " INVOKE_DEFAULT_LOCATOR
        ". An error reply prints `drover invoke: <category> error <code>: <message>`; exit "
        "code 3 when the queue is full, 4 on a timeout, 1 for other errors.",
        "drover invoke /production/echo ping hello\n"
        "gzip -c big.log | drover invoke /production/indexer add - --timeout 30000\n"
        "drover invoke /production/echo ping hi --header trace-id=4bf92f35"};
    cli_opt_t opts[] = {
        CLI_VALUE("timeout", "MS",
                  "shorten the app's request-timeout for this invocation (milliseconds)"),
        CLI_LIST("header", "NAME=VALUE", "a header of the enqueue, passed on to the worker"),
        CLI_VALUE("locator", "HOST:PORT",
                  "locator to resolve APP at (default $DROVER_LOCATOR or " INVOKE_DEFAULT_LOCATOR
                  ")"),
    };
    size_t n_opts = sizeof(opts) / sizeof(opts[0]);
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, n_opts, 2, 3, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *app = args.pos[0], *event = args.pos[1];
    const char *data = args.n_pos > 2 ? args.pos[2] : NULL;
    long timeout_ms = 0;
    loc_resolved_t r = {0};
    invoke_io_t io = {.fd = -1, .in_fd = -1};
    buf_init(&io.out, INVOKE_OUT_MAX + RPC_CHUNK_MAX);
    cli_invoke_rx_init(&io.rx, 1);
    if (opts[0].count) {
        int64_t v;
        if (str_to_i64(opts[0].value, 1, 86400000, &v) < 0) {
            rc = cli_usage_error(ctx, &cmd, "--timeout %s: expected milliseconds (1-86400000)",
                                 opts[0].value);
            goto out;
        }
        timeout_ms = (long)v;
    }
    if (!*event || strlen(event) > 128) {
        rc = cli_usage_error(ctx, &cmd, "EVENT: expected 1-128 characters");
        goto out;
    }
    rc = cli_invoke_encode_enqueue(&io.out, 1, event, timeout_ms, opts[1].list,
                                   (size_t)opts[1].count);
    if (rc == -EINVAL) {
        rc = cli_usage_error(ctx, &cmd, "--header: expected NAME=VALUE with a name of 1-255 bytes");
        goto out;
    }
    if (rc < 0) {
        rc = cli_fail(ctx, "cannot encode the request");
        goto out;
    }
    const char *env = getenv("DROVER_LOCATOR");
    const char *locator = opts[2].count ? opts[2].value
                          : env && *env ? env
                                        : INVOKE_DEFAULT_LOCATOR;
    err_t err = {0};
    int lrc = loc_client_resolve(locator, app, INVOKE_LOCATOR_TIMEOUT_MS, &r, &err);
    if (lrc < 0) {
        rc = lrc == -ENOENT ? cli_fail(ctx, "%s: %s", app, err.msg)
                            : cli_fail(ctx,
                                       "%s (is a drover agent running there? set "
                                       "DROVER_LOCATOR or --locator)",
                                       err.msg);
        goto out;
    }
    if (!r.api || strcmp(r.api, "worker") != 0) {
        rc = cli_fail(ctx, "%s is not a worker app (api %s)", app, r.api ? r.api : "-");
        goto out;
    }
    if (r.n == 0) {
        rc = cli_fail(ctx, "%s: no node runs it", app);
        goto out;
    }
    /* any node will do: start at a random one, try the others on failure */
    size_t first = (size_t)(now_ms() ^ (uint64_t)getpid()) % r.n;
    for (size_t k = 0; k < r.n && io.fd < 0; k++) {
        const loc_endpoint_t *ep = &r.eps[(first + k) % r.n];
        io.fd = connect_to(ep->host, ep->port, &err);
    }
    if (io.fd < 0) {
        rc = cli_fail(ctx, "%s: %s", app, err.msg);
        goto out;
    }
    if (data && strcmp(data, "-") == 0) {
        io.in_fd = STDIN_FILENO;
    } else {
        if (data && cli_invoke_encode_data(&io.out, 1, data, strlen(data)) < 0) {
            rc = cli_fail(ctx, "DATA is too large (use - and stdin)");
            goto out;
        }
        (void)rpc_encode(&io.out, 1, RPC_CLOSE, "");
    }
    if (timeout_ms)
        io.deadline = now_ms() + (uint64_t)timeout_ms + INVOKE_GRACE_MS;
    int irc = invoke_loop(&io, ctx->out, &err);
    if (irc < 0) {
        rc = cli_fail(ctx, "%s: %s", app, err.msg);
    } else if (io.rx.exit_code != CLI_EXIT_OK) {
        fprintf(ctx->err, "drover invoke: %s\n", io.rx.error);
        rc = io.rx.exit_code;
    } else {
        rc = CLI_EXIT_OK;
    }
out:
    if (io.fd >= 0)
        close(io.fd);
    buf_free(&io.out);
    cli_invoke_rx_free(&io.rx);
    loc_resolved_free(&r);
    cli_args_free(&args, opts, n_opts);
    return rc;
}
