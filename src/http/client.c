/* http/client: blocking HTTP client on the libcurl easy interface. One easy
 * handle per call: the CLI makes a handful of requests, so connection reuse
 * is not worth shared state. */
#include "http/client.h"

#include "core/alloc.h"
#include "core/log.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#define CLIENT_MAX_HEADERS        (64 * 1024)
#define CLIENT_CONNECT_TIMEOUT_MS 10000L

static pthread_once_t client_once = PTHREAD_ONCE_INIT;
static CURLcode client_init_rc;

static void client_global_init(void)
{
    client_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

void http_client_resp_init(http_client_resp_t *resp, size_t max_body)
{
    resp->status = 0;
    buf_init(&resp->headers, CLIENT_MAX_HEADERS);
    buf_init(&resp->body, max_body);
}

void http_client_resp_free(http_client_resp_t *resp)
{
    buf_free(&resp->headers);
    buf_free(&resp->body);
}

char *http_client_resp_header(const http_client_resp_t *resp, const char *name)
{
    size_t nlen = strlen(name);
    const char *p = resp->headers.data;
    const char *end = p ? p + resp->headers.len : NULL;
    while (p && p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *line_end = eol ? eol : end;
        if ((size_t)(line_end - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
            const char *v = p + nlen + 1;
            const char *ve = line_end;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            return xstrndup(v, (size_t)(ve - v));
        }
        p = eol ? eol + 1 : end;
    }
    return NULL;
}

typedef struct client_ctx {
    http_client_resp_t *resp;
    int (*on_data)(const char *p, size_t n, void *data);
    void *data;
    int fail; /* -E2BIG when a callback stopped the transfer over a limit */
    const char *fail_what;
    size_t fail_limit;
    bool stopped;             /* on_data asked to stop: not an error */
    const atomic_int *cancel; /* non-zero: abort the transfer (-ECANCELED) */
    CURL *h;                  /* the transfer, for its status while the body streams */
    bool follow;              /* follow redirects (http_client_stream_follow) */
    int body_fd;              /* >= 0: the request body is read from this file */
    uint64_t body_left;       /* bytes of body_fd still to send */
    int body_errno;           /* reading body_fd failed with this */
} client_ctx_t;

/* libcurl calls this about once a second and on every chunk; it is how a
 * blocking call (a 30 s watch) is ended promptly when its owner stops. */
static int client_on_progress(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
    const client_ctx_t *ctx = ud;
    return ctx->cancel && atomic_load(ctx->cancel) ? 1 : 0;
}

/* Keep the header lines of the final response only: a "100 Continue" or
 * other interim response comes first with its own status line. */
static size_t client_on_header(char *p, size_t size, size_t n, void *ud)
{
    client_ctx_t *ctx = ud;
    size_t len = size * n;
    if (len >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        buf_reset(&ctx->resp->headers);
        return len;
    }
    if (len <= 2 && (len == 0 || p[0] == '\r' || p[0] == '\n'))
        return len;
    if (buf_append(&ctx->resp->headers, p, len)) {
        ctx->fail = -E2BIG;
        ctx->fail_what = "header block";
        ctx->fail_limit = ctx->resp->headers.max;
        return 0;
    }
    return len;
}

static size_t client_on_body(char *p, size_t size, size_t n, void *ud)
{
    client_ctx_t *ctx = ud;
    size_t len = size * n;
    if (ctx->on_data) {
        /* The status is known once the headers are in; a streaming caller
         * needs it to tell an error answer from the stream it asked for. */
        if (ctx->resp->status == 0) {
            long status = 0;
            curl_easy_getinfo(ctx->h, CURLINFO_RESPONSE_CODE, &status);
            ctx->resp->status = (int)status;
        }
        if (ctx->on_data(p, len, ctx->data)) {
            ctx->stopped = true;
            return 0;
        }
        return len;
    }
    if (buf_append(&ctx->resp->body, p, len)) {
        ctx->fail = -E2BIG;
        ctx->fail_what = "body";
        ctx->fail_limit = ctx->resp->body.max;
        return 0;
    }
    return len;
}

/* The request body of http_client_upload, read as curl sends it so a
 * large file never sits in memory. A file that shrank under us ends the
 * transfer with an error rather than a short body. */
static size_t client_on_read(char *p, size_t size, size_t n, void *ud)
{
    client_ctx_t *ctx = ud;
    size_t want = size * n;
    if (want > ctx->body_left)
        want = (size_t)ctx->body_left;
    if (want == 0)
        return 0;
    for (;;) {
        ssize_t got = read(ctx->body_fd, p, want);
        if (got > 0) {
            ctx->body_left -= (uint64_t)got;
            return (size_t)got;
        }
        if (got < 0 && errno == EINTR)
            continue;
        ctx->body_errno = got < 0 ? errno : EIO;
        return CURL_READFUNC_ABORT;
    }
}

/* Name the transport problem the way a user can act on it. */
static int client_error(CURL *h, CURLcode cc, const char *method, const char *url,
                        const char *detail, long timeout_ms, err_t *err)
{
    long os = 0;
    curl_easy_getinfo(h, CURLINFO_OS_ERRNO, &os);
    const char *why = detail && *detail ? detail : curl_easy_strerror(cc);
    switch (cc) {
    case CURLE_COULDNT_CONNECT: {
        int e = os > 0 ? (int)os : ECONNREFUSED;
        return err_set(err, -e, "cannot connect to %s: %s", url, strerror(e));
    }
    case CURLE_COULDNT_RESOLVE_HOST:
        return err_set(err, -EHOSTUNREACH, "cannot resolve host of %s: %s", url, why);
    case CURLE_OPERATION_TIMEDOUT:
        return err_set(err, -ETIMEDOUT, "%s %s: timed out after %ld ms", method, url, timeout_ms);
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL: return err_set(err, -EINVAL, "bad URL %s: %s", url, why);
    case CURLE_GOT_NOTHING:
    case CURLE_RECV_ERROR:
    case CURLE_PARTIAL_FILE:
        return err_set(err, -ECONNRESET, "%s %s: connection closed: %s", method, url, why);
    case CURLE_SEND_ERROR:
        return err_set(err, -EPIPE, "%s %s: sending failed: %s", method, url, why);
    default: return err_set(err, -EIO, "%s %s: %s", method, url, why);
    }
}

static int client_perform(const char *method, const char *url, const http_header_t *headers,
                          size_t n_headers, const void *body, size_t len, long timeout_ms,
                          client_ctx_t *ctx, err_t *err)
{
    pthread_once(&client_once, client_global_init);
    if (client_init_rc != CURLE_OK)
        return err_set(err, -EIO, "curl_global_init: %s", curl_easy_strerror(client_init_rc));
    http_client_resp_t *resp = ctx->resp;
    resp->status = 0;
    buf_reset(&resp->headers);
    buf_reset(&resp->body);

    CURL *h = curl_easy_init();
    if (!h)
        return err_set(err, -ENOMEM, "curl_easy_init failed");
    ctx->h = h;
    struct curl_slist *hl = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    int rc = 0;

    for (size_t i = 0; i < n_headers; i++) {
        char *line = xasprintf("%s: %s", headers[i].name, headers[i].value);
        struct curl_slist *n = curl_slist_append(hl, line);
        free(line);
        if (!n) {
            rc = err_set(err, -ENOMEM, "curl_slist_append failed");
            goto out;
        }
        hl = n;
    }
    /* No "Expect: 100-continue" round trip on large bodies. */
    struct curl_slist *n = curl_slist_append(hl, "Expect:");
    if (!n) {
        rc = err_set(err, -ENOMEM, "curl_slist_append failed");
        goto out;
    }
    hl = n;

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hl);
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, client_on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, ctx);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, client_on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, ctx);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, CLIENT_CONNECT_TIMEOUT_MS);
    curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
    if (timeout_ms > 0)
        curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    if (ctx->follow) {
        curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
        curl_easy_setopt(h, CURLOPT_MAXREDIRS, (long)HTTP_CLIENT_MAX_REDIRECTS);
        curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    }
    if (ctx->cancel) {
        curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);
        curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, client_on_progress);
        curl_easy_setopt(h, CURLOPT_XFERINFODATA, ctx);
    }
    if (strcmp(method, "HEAD") == 0) {
        curl_easy_setopt(h, CURLOPT_NOBODY, 1L);
    } else {
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
        bool wants_body = strcmp(method, "POST") == 0 || strcmp(method, "PUT") == 0 ||
                          strcmp(method, "PATCH") == 0;
        if (ctx->body_fd >= 0) {
            /* CURLOPT_POST with a read callback and a known size: the body
             * goes out with a Content-Length, whatever the method's name. */
            curl_easy_setopt(h, CURLOPT_POST, 1L);
            curl_easy_setopt(h, CURLOPT_READFUNCTION, client_on_read);
            curl_easy_setopt(h, CURLOPT_READDATA, ctx);
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)ctx->body_left);
        } else if (body || wants_body) {
            curl_easy_setopt(h, CURLOPT_POSTFIELDS, body ? (const char *)body : "");
            curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(body ? len : 0));
        }
    }

    CURLcode cc = curl_easy_perform(h);
    long status = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
    resp->status = (int)status;
    if (cc == CURLE_WRITE_ERROR && ctx->stopped) {
        cc = CURLE_OK;
    } else if (cc != CURLE_OK && ctx->fail == -E2BIG) {
        rc = err_set(err, -E2BIG, "%s %s: response %s exceeds %zu bytes", method, url,
                     ctx->fail_what, ctx->fail_limit);
        goto out;
    }
    if (cc == CURLE_ABORTED_BY_CALLBACK && ctx->cancel && atomic_load(ctx->cancel)) {
        rc = err_set(err, -ECANCELED, "%s %s: cancelled", method, url);
        goto out;
    }
    if (cc == CURLE_ABORTED_BY_CALLBACK && ctx->body_errno) {
        rc = err_set(err, -ctx->body_errno, "%s %s: reading the request body: %s", method, url,
                     strerror(ctx->body_errno));
        goto out;
    }
    if (cc != CURLE_OK) {
        /* After a redirect, the host that failed is the one redirected
         * to: name it, not the one that answered. */
        const char *where = url;
        char *eff = NULL;
        if (ctx->follow && curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &eff) == CURLE_OK && eff)
            where = eff;
        rc = client_error(h, cc, method, where, errbuf, timeout_ms, err);
        goto out;
    }
    log_debug("http", "%s %s -> %d", method, url, resp->status);

out:
    curl_slist_free_all(hl);
    curl_easy_cleanup(h);
    return rc;
}

int http_client_request(const char *method, const char *url, const http_header_t *headers,
                        size_t n_headers, const void *body, size_t len, long timeout_ms,
                        http_client_resp_t *resp, err_t *err)
{
    client_ctx_t ctx = {.resp = resp, .body_fd = -1};
    return client_perform(method, url, headers, n_headers, body, len, timeout_ms, &ctx, err);
}

int http_client_request_cancellable(const char *method, const char *url,
                                    const http_header_t *headers, size_t n_headers,
                                    const void *body, size_t len, long timeout_ms,
                                    const atomic_int *cancel, http_client_resp_t *resp, err_t *err)
{
    client_ctx_t ctx = {.resp = resp, .cancel = cancel, .body_fd = -1};
    return client_perform(method, url, headers, n_headers, body, len, timeout_ms, &ctx, err);
}

int http_client_stream(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const void *body, size_t len,
                       int (*on_data)(const char *p, size_t n, void *data), void *data,
                       http_client_resp_t *resp, err_t *err)
{
    client_ctx_t ctx = {.resp = resp, .on_data = on_data, .data = data, .body_fd = -1};
    return client_perform(method, url, headers, n_headers, body, len, 0, &ctx, err);
}

int http_client_stream_follow(const char *method, const char *url, const http_header_t *headers,
                              size_t n_headers, long timeout_ms,
                              int (*on_data)(const char *p, size_t n, void *data), void *data,
                              http_client_resp_t *resp, err_t *err)
{
    client_ctx_t ctx = {
        .resp = resp, .on_data = on_data, .data = data, .follow = true, .body_fd = -1};
    return client_perform(method, url, headers, n_headers, NULL, 0, timeout_ms, &ctx, err);
}

int http_client_upload(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const char *path, long timeout_ms,
                       http_client_resp_t *resp, err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "cannot open %s: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int e = errno;
        close(fd);
        return err_set(err, -e, "cannot stat %s: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, -EINVAL, "%s is not a regular file", path);
    }
    client_ctx_t ctx = {.resp = resp, .body_fd = fd, .body_left = (uint64_t)st.st_size};
    int rc = client_perform(method, url, headers, n_headers, NULL, 0, timeout_ms, &ctx, err);
    close(fd);
    return rc;
}
