/* `drover invoke`: the pure parts (encoding, the reply stream, error lines
 * and exit codes), then the whole verb against a fake invocation service
 * in a thread, with the locator answer supplied by this file. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/artifact.h"
#include "cli/cli.h"
#include "cli/invoke.h"
#include "core/alloc.h"
#include "core/rpc.h"
#include "locator/locator.h"
#include "spec/spec.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cli/link_stubs.h"

/* ---- the locator answer (replaces the weak stand-in of resolve.c) ---------- */

static int fake_port;
static const char *fake_api = "worker";

int loc_client_resolve(const char *host_port, const char *name, long timeout_ms,
                       loc_resolved_t *out, err_t *err)
{
    (void)host_port;
    (void)timeout_ms;
    memset(out, 0, sizeof(*out));
    if (strcmp(name, "/prod/missing") == 0)
        return err_set(err, -ENOENT, "service not found");
    out->n = 1;
    out->eps = xcalloc(1, sizeof(*out->eps));
    out->eps[0].host = xstrdup("127.0.0.1");
    out->eps[0].port = fake_port;
    out->version = 1;
    out->api = xstrdup(fake_api);
    return 0;
}

void loc_resolved_free(loc_resolved_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        free(r->eps[i].host);
    free(r->eps);
    free(r->api);
    memset(r, 0, sizeof(*r));
}

/* ---- helpers ------------------------------------------------------------------ */

static void decode_one(rpc_decoder_t *d, rpc_msg_t *m)
{
    assert_int_equal(rpc_decoder_next(d, m, NULL), 1);
}

/* ---- pure parts ------------------------------------------------------------------ */

static void test_names_and_codes(void **state)
{
    (void)state;
    assert_string_equal(cli_invoke_category_name(1), "protocol");
    assert_string_equal(cli_invoke_category_name(2), "locator");
    assert_string_equal(cli_invoke_category_name(3), "engine");
    assert_string_equal(cli_invoke_category_name(4), "worker");
    assert_string_equal(cli_invoke_category_name(5), "app");
    assert_string_equal(cli_invoke_category_name(77), "unknown");
    assert_int_equal(cli_invoke_exit_code(3, 11), CLI_INVOKE_EXIT_QUEUE_FULL);
    assert_int_equal(cli_invoke_exit_code(3, 110), CLI_INVOKE_EXIT_TIMEOUT);
    assert_int_equal(cli_invoke_exit_code(3, 5), CLI_EXIT_ERROR);
    assert_int_equal(cli_invoke_exit_code(4, 32), CLI_EXIT_ERROR);
    assert_int_equal(cli_invoke_exit_code(1, 38), CLI_EXIT_ERROR);
}

static void test_encode(void **state)
{
    (void)state;
    buf_t b = BUF_INIT(0);
    assert_int_equal(cli_invoke_encode_enqueue(&b, 1, "ping", 0, NULL, 0), 0);
    assert_int_equal(cli_invoke_encode_enqueue(&b, 1, "ping", 1500, NULL, 0), 0);
    static const char *const hdrs[] = {"trace-id=abc", "empty="};
    assert_int_equal(cli_invoke_encode_enqueue(&b, 2, "ping", 0, hdrs, 2), 0);
    static const char *const bad1[] = {"novalue"}, *const bad2[] = {"=v"};
    size_t before = b.len;
    assert_int_equal(cli_invoke_encode_enqueue(&b, 3, "ping", 0, bad1, 1), -EINVAL);
    assert_int_equal(cli_invoke_encode_enqueue(&b, 3, "ping", 0, bad2, 1), -EINVAL);
    assert_int_equal(b.len, before);
    size_t big = (RPC_CHUNK_MAX * 5) / 2;
    char *data = xmalloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)(i % 251);
    assert_int_equal(cli_invoke_encode_data(&b, 1, data, big), 0);
    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    rpc_decoder_feed(&d, b.data, b.len);
    rpc_msg_t m;
    const char *p;
    size_t n;
    decode_one(&d, &m);
    assert_int_equal(m.channel, 1);
    assert_int_equal(m.type, RPC_INVOKE);
    assert_int_equal(rpc_arg_str(&m, 0, &p, &n, NULL), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(p, "ping", 4);
    assert_int_equal(m.nheaders, 0);
    decode_one(&d, &m);
    assert_int_equal(rpc_msg_header(&m, "timeout", &p, &n), 0);
    assert_int_equal(n, 4);
    assert_memory_equal(p, "1500", 4);
    decode_one(&d, &m);
    assert_int_equal(m.channel, 2);
    assert_int_equal(m.nheaders, 2);
    assert_int_equal(rpc_msg_header(&m, "trace-id", &p, &n), 0);
    assert_int_equal(n, 3);
    assert_memory_equal(p, "abc", 3);
    assert_int_equal(rpc_msg_header(&m, "empty", &p, &n), 0);
    assert_int_equal(n, 0);
    assert_int_equal(rpc_msg_header(&m, "timeout", &p, &n), -ENOENT);
    /* the data in chunks of at most RPC_CHUNK_MAX, in order */
    size_t got = 0;
    for (int i = 0; i < 3; i++) {
        decode_one(&d, &m);
        assert_int_equal(m.type, RPC_WRITE);
        assert_int_equal(rpc_arg_bytes(&m, 0, &p, &n, NULL), 0);
        assert_true(n <= RPC_CHUNK_MAX);
        assert_memory_equal(p, data + got, n);
        got += n;
    }
    assert_int_equal(got, big);
    assert_int_equal(rpc_decoder_next(&d, &m, NULL), 0);
    /* a bounded buffer: refused whole */
    buf_t small = BUF_INIT(100);
    assert_int_equal(cli_invoke_encode_data(&small, 1, data, 1000), -ENOBUFS);
    assert_int_equal(small.len, 0);
    rpc_decoder_free(&d);
    buf_free(&b);
    buf_free(&small);
    free(data);
}

static void test_rx_stream(void **state)
{
    (void)state;
    buf_t b = BUF_INIT(0);
    rpc_encode(&b, 1, RPC_WRITE, "b", "hello ", (size_t)6);
    rpc_encode(&b, 1, RPC_WRITE, "S", "world", (size_t)5); /* str chunks too */
    rpc_encode(&b, 1, RPC_CLOSE, "");
    char *text = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&text, &len);
    cli_invoke_rx_t rx;
    cli_invoke_rx_init(&rx, 1);
    err_t err;
    /* one byte at a time: chunks print as they complete */
    int rc = 0;
    for (size_t i = 0; i < b.len && rc == 0; i++)
        rc = cli_invoke_rx_feed(&rx, b.data + i, 1, out, &err);
    assert_int_equal(rc, 1);
    assert_true(rx.done);
    assert_int_equal(rx.exit_code, CLI_EXIT_OK);
    fclose(out);
    assert_string_equal(text, "hello world");
    free(text);
    cli_invoke_rx_free(&rx);
    buf_free(&b);
}

static void test_rx_errors(void **state)
{
    (void)state;
    struct {
        unsigned cat, code;
        const char *msg, *want;
        int exit;
    } cases[] = {
        {3, 11, "queue is full (3 waiting)", "engine error 11: queue is full (3 waiting)",
         CLI_INVOKE_EXIT_QUEUE_FULL},
        {3, 110, "request timed out after 5 ms", "engine error 110: request timed out after 5 ms",
         CLI_INVOKE_EXIT_TIMEOUT},
        {4, 32, "worker died:\nexit 1", "worker error 32: worker died:?exit 1", CLI_EXIT_ERROR},
        {1, 38, "no handler for event x", "protocol error 38: no handler for event x",
         CLI_EXIT_ERROR},
        {5, 7, "", "app error 7: (no message)", CLI_EXIT_ERROR},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        buf_t b = BUF_INIT(0);
        rpc_encode(&b, 1, RPC_WRITE, "b", "x", (size_t)1);
        rpc_encode(&b, 1, RPC_ERROR, "[uu]s", cases[i].cat, cases[i].code, cases[i].msg);
        char *text = NULL;
        size_t len = 0;
        FILE *out = open_memstream(&text, &len);
        cli_invoke_rx_t rx;
        cli_invoke_rx_init(&rx, 1);
        err_t err;
        assert_int_equal(cli_invoke_rx_feed(&rx, b.data, b.len, out, &err), 1);
        assert_string_equal(rx.error, cases[i].want);
        assert_int_equal(rx.exit_code, cases[i].exit);
        fclose(out);
        assert_string_equal(text, "x");
        free(text);
        cli_invoke_rx_free(&rx);
        buf_free(&b);
    }
}

static void test_rx_protocol_errors(void **state)
{
    (void)state;
    buf_t cases[4] = {BUF_INIT(0), BUF_INIT(0), BUF_INIT(0), BUF_INIT(0)};
    rpc_encode(&cases[0], 2, RPC_WRITE, "b", "x", (size_t)1); /* another channel */
    rpc_encode(&cases[1], 1, RPC_WRITE, "u", 5u);             /* not bytes */
    rpc_encode(&cases[2], 1, 9, "");                          /* unknown type */
    buf_append(&cases[3], "\xc1\xc1\xc1\xc1", 4);             /* not msgpack */
    for (size_t i = 0; i < 4; i++) {
        FILE *out = fopen("/dev/null", "w");
        cli_invoke_rx_t rx;
        cli_invoke_rx_init(&rx, 1);
        err_t err = {0};
        assert_int_equal(cli_invoke_rx_feed(&rx, cases[i].data, cases[i].len, out, &err), -EPROTO);
        assert_true(err.msg[0] != '\0');
        fclose(out);
        cli_invoke_rx_free(&rx);
        buf_free(&cases[i]);
    }
}

/* ---- the verb against a fake service ------------------------------------------ */

typedef struct fake {
    int lfd;
    pthread_t thr;
    char event[64];
    char timeout[32];
    buf_t got; /* the request bytes */
} fake_t;

/* One connection: collect enqueue and writes until close, then answer by
 * event: "echo" writes the data back in two chunks; "full" answers queue
 * full; "slow" answers [3, 110]. */
static void *fake_main(void *arg)
{
    fake_t *f = arg;
    int fd = accept(f->lfd, NULL, NULL);
    if (fd < 0)
        return NULL;
    rpc_decoder_t d;
    rpc_decoder_init(&d, RPC_MAX_MESSAGE_DEFAULT);
    char buf[65536];
    bool closed = false;
    while (!closed) {
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n <= 0)
            break;
        rpc_decoder_feed(&d, buf, (size_t)n);
        rpc_msg_t m;
        while (rpc_decoder_next(&d, &m, NULL) == 1) {
            const char *p;
            size_t len;
            if (m.type == RPC_WRITE && f->event[0]) {
                rpc_arg_bytes(&m, 0, &p, &len, NULL);
                buf_append(&f->got, p, len);
            } else if (m.type == RPC_INVOKE && !f->event[0]) {
                rpc_arg_str(&m, 0, &p, &len, NULL);
                snprintf(f->event, sizeof(f->event), "%.*s", (int)len, p);
                if (rpc_msg_header(&m, "timeout", &p, &len) == 0)
                    snprintf(f->timeout, sizeof(f->timeout), "%.*s", (int)len, p);
            } else if (m.type == RPC_CLOSE) {
                closed = true;
            }
        }
    }
    buf_t out = BUF_INIT(0);
    if (strcmp(f->event, "full") == 0) {
        rpc_encode(&out, 1, RPC_ERROR, "[uu]s", 3u, 11u, "queue is full (100 waiting)");
    } else if (strcmp(f->event, "slow") == 0) {
        rpc_encode(&out, 1, RPC_ERROR, "[uu]s", 3u, 110u, "request timed out after 10 ms");
    } else {
        size_t half = f->got.len / 2;
        rpc_encode(&out, 1, RPC_WRITE, "b", f->got.data ? f->got.data : "", half);
        rpc_encode(&out, 1, RPC_WRITE, "b", f->got.data ? f->got.data + half : "",
                   f->got.len - half);
        rpc_encode(&out, 1, RPC_CLOSE, "");
    }
    size_t off = 0;
    while (off < out.len) {
        ssize_t w = send(fd, out.data + off, out.len - off, MSG_NOSIGNAL);
        if (w <= 0)
            break;
        off += (size_t)w;
    }
    buf_free(&out);
    rpc_decoder_free(&d);
    close(fd);
    return NULL;
}

static fake_t *fake_start(void)
{
    fake_t *f = calloc(1, sizeof(*f));
    buf_init(&f->got, 0);
    f->lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(f->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(f->lfd, 4), 0);
    socklen_t l = sizeof(a);
    getsockname(f->lfd, (struct sockaddr *)&a, &l);
    fake_port = ntohs(a.sin_port);
    pthread_create(&f->thr, NULL, fake_main, f);
    return f;
}

/* Wait for the connection to be served (what it saw stays readable). */
static void fake_join(fake_t *f)
{
    shutdown(f->lfd, SHUT_RDWR);
    pthread_join(f->thr, NULL);
    close(f->lfd);
}

static void fake_free(fake_t *f)
{
    buf_free(&f->got);
    free(f);
}

typedef struct run {
    int rc;
    char *out, *err;
    size_t out_len, err_len;
} run_t;

static void run_invoke(run_t *r, int argc, const char **argv)
{
    FILE *out = open_memstream(&r->out, &r->out_len);
    FILE *err = open_memstream(&r->err, &r->err_len);
    cli_ctx_t ctx = {.out = out, .err = err};
    r->rc = cli_cmd_invoke(&ctx, argc, (char **)argv);
    fclose(out);
    fclose(err);
}

static void run_free(run_t *r)
{
    free(r->out);
    free(r->err);
}

static void test_verb_data(void **state)
{
    (void)state;
    fake_t *f = fake_start();
    run_t r;
    const char *argv[] = {"/prod/echo", "echo", "hello world", "--timeout", "2500"};
    run_invoke(&r, 5, argv);
    assert_int_equal(r.rc, CLI_EXIT_OK);
    assert_string_equal(r.out, "hello world");
    assert_string_equal(r.err, "");
    fake_join(f);
    assert_string_equal(f->event, "echo");
    fake_free(f);
    run_free(&r);
}

static void test_verb_timeout_header_and_errors(void **state)
{
    (void)state;
    fake_t *f = fake_start();
    run_t r;
    const char *argv[] = {"/prod/echo", "full", "x", "--timeout", "1500"};
    run_invoke(&r, 5, argv);
    assert_int_equal(r.rc, CLI_INVOKE_EXIT_QUEUE_FULL);
    assert_string_equal(r.err, "drover invoke: engine error 11: queue is full (100 waiting)\n");
    fake_join(f);
    assert_string_equal(f->timeout, "1500");
    fake_free(f);
    run_free(&r);
    f = fake_start();
    const char *argv2[] = {"/prod/echo", "slow"};
    run_invoke(&r, 2, argv2);
    assert_int_equal(r.rc, CLI_INVOKE_EXIT_TIMEOUT);
    fake_join(f);
    assert_string_equal(f->timeout, ""); /* no --timeout: no header */
    assert_int_equal(f->got.len, 0);     /* no DATA: no write */
    fake_free(f);
    run_free(&r);
}

static void test_verb_stdin(void **state)
{
    (void)state;
    fake_t *f = fake_start();
    int p[2];
    assert_int_equal(pipe(p), 0);
    size_t big = 300000;
    char *data = xmalloc(big);
    for (size_t i = 0; i < big; i++)
        data[i] = (char)('a' + i % 26);
    /* the pipe holds less than that: a child process feeds it */
    int saved = dup(STDIN_FILENO);
    dup2(p[0], STDIN_FILENO);
    close(p[0]);
    pid_t pid = fork();
    if (pid == 0) {
        size_t off = 0;
        while (off < big) {
            ssize_t w = write(p[1], data + off, big - off);
            if (w <= 0)
                _exit(1);
            off += (size_t)w;
        }
        _exit(0);
    }
    close(p[1]);
    run_t r;
    const char *argv[] = {"/prod/echo", "echo", "-"};
    run_invoke(&r, 3, argv);
    dup2(saved, STDIN_FILENO);
    close(saved);
    int status;
    assert_int_equal(waitpid(pid, &status, 0), pid);
    assert_int_equal(r.rc, CLI_EXIT_OK);
    assert_int_equal(r.out_len, big);
    assert_memory_equal(r.out, data, big);
    fake_join(f);
    fake_free(f);
    run_free(&r);
    free(data);
}

static void test_verb_refusals(void **state)
{
    (void)state;
    run_t r;
    const char *argv1[] = {"/prod/echo"};
    run_invoke(&r, 1, argv1);
    assert_int_equal(r.rc, CLI_EXIT_USAGE);
    run_free(&r);
    const char *argv2[] = {"/prod/echo", "e", "--timeout", "soon"};
    run_invoke(&r, 4, argv2);
    assert_int_equal(r.rc, CLI_EXIT_USAGE);
    assert_non_null(strstr(r.err, "--timeout soon"));
    run_free(&r);
    const char *argv3[] = {"/prod/missing", "e"};
    run_invoke(&r, 2, argv3);
    assert_int_equal(r.rc, CLI_EXIT_ERROR);
    assert_non_null(strstr(r.err, "/prod/missing: service not found"));
    run_free(&r);
    fake_api = "service";
    const char *argv4[] = {"/prod/web", "e"};
    run_invoke(&r, 2, argv4);
    fake_api = "worker";
    assert_int_equal(r.rc, CLI_EXIT_ERROR);
    assert_non_null(strstr(r.err, "not a worker app"));
    run_free(&r);
    /* nothing listens there */
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&a, sizeof(a));
    socklen_t l = sizeof(a);
    getsockname(fd, (struct sockaddr *)&a, &l);
    close(fd);
    fake_port = ntohs(a.sin_port);
    const char *argv5[] = {"/prod/echo", "e"};
    run_invoke(&r, 2, argv5);
    assert_int_equal(r.rc, CLI_EXIT_ERROR);
    assert_non_null(strstr(r.err, "connect to 127.0.0.1"));
    run_free(&r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names_and_codes),
        cmocka_unit_test(test_encode),
        cmocka_unit_test(test_rx_stream),
        cmocka_unit_test(test_rx_errors),
        cmocka_unit_test(test_rx_protocol_errors),
        cmocka_unit_test(test_verb_data),
        cmocka_unit_test(test_verb_timeout_header_and_errors),
        cmocka_unit_test(test_verb_stdin),
        cmocka_unit_test(test_verb_refusals),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
