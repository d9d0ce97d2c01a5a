/* /v1/artifacts: content-addressed app archives (tar.gz) that agents fetch
 * and unpack (src/agent/artifact.h). An artifact's id is the sha256 of its
 * bytes, so a file is written once, never changes, and an agent can check
 * what it downloaded.
 *
 * Storage is plain files, <data_dir>/artifacts/sha256-<hex>.tar.gz, written
 * to a temporary name, fsync'd and renamed, so a crash never leaves a
 * partial file under a real id. All file work runs off the loop thread:
 * uploads (hash + write + fsync) in the libuv thread pool, downloads as
 * uv_fs_* reads of one chunk at a time, paced by the client's reading. */
#include "api/api_internal.h"

#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ART_HEX_LEN 64
#define ART_CHUNK   (256 * 1024)
/* Read the next chunk only while less than this is queued for the client
 * (the server drops a client with more than max_pending_write queued). */
#define ART_PACE_BYTES (1024 * 1024)
#define ART_PACE_MS    5

typedef struct art_call {
    api_t *api;
    http_req_t *req;
    char hex[ART_HEX_LEN + 1];
    char *dir;  /* <data_dir>/artifacts */
    char *path; /* <dir>/sha256-<hex>.tar.gz */
    /* upload (thread pool) */
    uv_work_t work;
    int status; /* 0 or negative errno */
    char msg[256];
    bool existed;
    /* download */
    uv_fs_t fs;
    uv_file fd;
    uv_timer_t pace;
    uint64_t size, off;
    char *chunk;
    bool streaming; /* http_stream_begin done */
    bool aborted;   /* the client left or the server is shutting down */
    bool pacing;    /* waiting on the pace timer */
} art_call_t;

static art_call_t *art_call_new(api_t *api, http_req_t *req)
{
    art_call_t *c = xcalloc(1, sizeof(*c));
    c->api = api;
    c->req = req;
    c->fd = -1;
    c->dir = xasprintf("%s/artifacts", api->opts.data_dir);
    return c;
}

static void art_call_free(art_call_t *c)
{
    free(c->dir);
    free(c->path);
    free(c->chunk);
    free(c);
}

static void art_set_path(art_call_t *c)
{
    c->path = xasprintf("%s/sha256-%s.tar.gz", c->dir, c->hex);
}

/* ---- upload ---------------------------------------------------------- */

static void art_fail(art_call_t *c, int code, const char *what, const char *path)
{
    c->status = code;
    snprintf(c->msg, sizeof(c->msg), "%s %s: %s", what, path, strerror(-code));
}

/* Write the whole body to `fd`, then make it durable. */
static int art_write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += w;
        n -= (size_t)w;
    }
    return fsync(fd) ? -errno : 0;
}

/* Thread pool: hash, and store unless the same bytes are already there.
 * Touches only the request body, which stays put while the request is
 * pending, and this call's own fields. */
static void art_upload_work(uv_work_t *w)
{
    art_call_t *c = w->data;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int md_len = 0;
    if (!EVP_Digest(c->req->body, c->req->body_len, md, &md_len, EVP_sha256(), NULL)) {
        c->status = -EIO;
        snprintf(c->msg, sizeof(c->msg), "sha256 of the upload failed");
        return;
    }
    for (unsigned i = 0; i < md_len && i * 2 < ART_HEX_LEN; i++)
        snprintf(c->hex + i * 2, 3, "%02x", md[i]);
    art_set_path(c);
    struct stat st;
    if (stat(c->path, &st) == 0 && (uint64_t)st.st_size == c->req->body_len) {
        c->existed = true;
        return;
    }
    if (mkdir(c->dir, 0755) && errno != EEXIST) {
        art_fail(c, -errno, "cannot create", c->dir);
        return;
    }
    char *tmp = xasprintf("%s/.upload-XXXXXX", c->dir);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        art_fail(c, -errno, "cannot create a temporary file in", c->dir);
        free(tmp);
        return;
    }
    /* mkstemp makes it 0600; agents may read the store as another user. */
    int rc = fchmod(fd, 0644) ? -errno : 0;
    if (!rc)
        rc = art_write_all(fd, c->req->body, c->req->body_len);
    if (close(fd) && !rc)
        rc = -errno;
    if (!rc && rename(tmp, c->path))
        rc = -errno;
    if (rc) {
        art_fail(c, rc, "cannot write", tmp);
        unlink(tmp);
        free(tmp);
        return;
    }
    free(tmp);
    /* The rename is durable only once the directory is. */
    int dfd = open(c->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd < 0 || fsync(dfd))
        art_fail(c, -errno, "cannot sync", c->dir);
    if (dfd >= 0)
        close(dfd);
}

static void art_upload_done(uv_work_t *w, int status)
{
    art_call_t *c = w->data;
    if (status == UV_ECANCELED) {
        c->status = -ECANCELED;
        snprintf(c->msg, sizeof(c->msg), "upload cancelled");
    }
    if (c->status) {
        int code = c->status == -ENOSPC || c->status == -EDQUOT ? 507 : 500;
        api_reply_error(c->api, c->req, code, NULL, "storing the artifact failed: %s", c->msg);
    } else {
        if (!c->existed)
            log_info("api", "artifact sha256:%s stored (%zu bytes)", c->hex, c->req->body_len);
        char id[8 + ART_HEX_LEN];
        snprintf(id, sizeof(id), "sha256:%s", c->hex);
        api_reply_json(c->api, c->req, c->existed ? 200 : 201,
                       json_pack("{s:s, s:I}", "id", id, "size", (json_int_t)c->req->body_len), 0);
    }
    art_call_free(c);
}

static void art_upload(api_t *api, http_req_t *req)
{
    static const unsigned char gz[2] = {0x1f, 0x8b};
    if (req->body_len == 0) {
        api_reply_error(api, req, 400, NULL, "request body is empty: expected a .tar.gz archive");
        return;
    }
    if (req->body_len < 2 || memcmp(req->body, gz, 2) != 0) {
        api_reply_error(api, req, 400, NULL,
                        "the body is not gzip data: an artifact is a .tar.gz archive");
        return;
    }
    art_call_t *c = art_call_new(api, req);
    c->work.data = c;
    int rc = uv_queue_work(api->loop, &c->work, art_upload_work, art_upload_done);
    if (rc) {
        api_reply_error(api, req, 503, NULL, "cannot queue the upload: %s", uv_strerror(rc));
        art_call_free(c);
    }
}

/* ---- download -------------------------------------------------------- */

static void art_pace_closed(uv_handle_t *h)
{
    art_call_free(h->data);
}

static void art_fd_closed(uv_fs_t *fs)
{
    art_call_t *c = fs->data;
    uv_fs_req_cleanup(fs);
    uv_close((uv_handle_t *)&c->pace, art_pace_closed);
}

/* Release the file and the timer; the request is already ended. */
static void art_release(art_call_t *c)
{
    uv_timer_stop(&c->pace);
    if (c->fd >= 0) {
        uv_file fd = c->fd;
        c->fd = -1;
        c->fs.data = c;
        if (uv_fs_close(c->api->loop, &c->fs, fd, art_fd_closed) == 0)
            return;
    }
    uv_close((uv_handle_t *)&c->pace, art_pace_closed);
}

static void art_error(art_call_t *c, int status, const char *fmt, const char *arg)
{
    if (c->streaming)
        http_stream_end(c->req);
    else
        api_reply_error(c->api, c->req, status, NULL, fmt, arg);
    art_release(c);
}

static void art_read_next(art_call_t *c);

static void art_on_read(uv_fs_t *fs)
{
    art_call_t *c = fs->data;
    ssize_t n = fs->result;
    uv_fs_req_cleanup(fs);
    if (n < 0) {
        log_warn("api", "reading %s: %s", c->path, uv_strerror((int)n));
        art_error(c, 500, "reading the artifact failed: %s", uv_strerror((int)n));
        return;
    }
    if (!c->streaming) { /* small file: one answer with a Content-Length */
        char etag[8 + ART_HEX_LEN + 3];
        snprintf(etag, sizeof(etag), "\"sha256:%s\"", c->hex);
        http_header_t hdrs[] = {{"Content-Type", "application/gzip"}, {"ETag", etag}};
        http_respond(c->req, 200, hdrs, 2, c->chunk, (size_t)n);
        art_release(c);
        return;
    }
    if (n == 0 || c->aborted) {
        if (n == 0 && c->off < c->size)
            log_warn("api", "%s shrank while being sent (%" PRIu64 " of %" PRIu64 " bytes)",
                     c->path, c->off, c->size);
        http_stream_end(c->req);
        art_release(c);
        return;
    }
    c->off += (uint64_t)n;
    if (http_stream_write(c->req, c->chunk, (size_t)n) != 0 || c->off >= c->size) {
        http_stream_end(c->req);
        art_release(c);
        return;
    }
    art_read_next(c);
}

static void art_on_pace(uv_timer_t *t)
{
    art_call_t *c = t->data;
    c->pacing = false;
    art_read_next(c);
}

/* Next chunk, once the client has taken most of what is queued. */
static void art_read_next(art_call_t *c)
{
    if (c->aborted) {
        http_stream_end(c->req);
        art_release(c);
        return;
    }
    if (http_stream_pending(c->req) > ART_PACE_BYTES) {
        c->pacing = true;
        uv_timer_start(&c->pace, art_on_pace, ART_PACE_MS, 0);
        return;
    }
    uint64_t left = c->size - c->off;
    uv_buf_t b = uv_buf_init(c->chunk, left < ART_CHUNK ? (unsigned)left : ART_CHUNK);
    c->fs.data = c;
    int rc = uv_fs_read(c->api->loop, &c->fs, c->fd, &b, 1, (int64_t)c->off, art_on_read);
    if (rc)
        art_error(c, 500, "reading the artifact failed: %s", uv_strerror(rc));
}

static void art_abort(http_req_t *req, void *data)
{
    art_call_t *c = data;
    c->aborted = true;
    if (c->pacing) { /* nothing in flight to wait for */
        c->pacing = false;
        http_stream_end(c->req);
        art_release(c);
    }
}

static void art_on_stat(uv_fs_t *fs)
{
    art_call_t *c = fs->data;
    int rc = (int)fs->result;
    c->size = fs->statbuf.st_size;
    uv_fs_req_cleanup(fs);
    if (rc < 0) {
        art_error(c, 500, "cannot stat the artifact: %s", uv_strerror(rc));
        return;
    }
    char etag[8 + ART_HEX_LEN + 3], size[24];
    snprintf(etag, sizeof(etag), "\"sha256:%s\"", c->hex);
    snprintf(size, sizeof(size), "%" PRIu64, c->size);
    if (strcmp(c->req->method, "HEAD") == 0) {
        /* HEAD: the length a GET would give, no body. */
        http_header_t hdrs[] = {{"Content-Type", "application/gzip"}, {"ETag", etag}};
        http_respond(c->req, 200, hdrs, 2, "", (size_t)c->size);
        art_release(c);
        return;
    }
    c->chunk = xmalloc(c->size < ART_CHUNK ? c->size + 1 : ART_CHUNK);
    if (c->size > ART_CHUNK) {
        http_header_t hdrs[] = {
            {"Content-Type", "application/gzip"}, {"ETag", etag}, {"X-Drover-Size", size}};
        http_req_on_abort(c->req, art_abort, c);
        c->streaming = true;
        if (http_stream_begin(c->req, 200, hdrs, 3) != 0) {
            http_stream_end(c->req);
            art_release(c);
            return;
        }
    }
    art_read_next(c);
}

static void art_on_open(uv_fs_t *fs)
{
    art_call_t *c = fs->data;
    int rc = (int)fs->result;
    uv_fs_req_cleanup(fs);
    if (rc == UV_ENOENT) {
        art_error(c, 404, "artifact %s not found", c->req->path + strlen("/v1/artifacts/"));
        return;
    }
    if (rc < 0) {
        art_error(c, 500, "cannot open the artifact: %s", uv_strerror(rc));
        return;
    }
    c->fd = rc;
    c->fs.data = c;
    rc = uv_fs_fstat(c->api->loop, &c->fs, c->fd, art_on_stat);
    if (rc)
        art_error(c, 500, "cannot stat the artifact: %s", uv_strerror(rc));
}

static bool art_id_parse(const char *id, char *hex)
{
    if (!str_has_prefix(id, "sha256:") || strlen(id) != 7 + ART_HEX_LEN)
        return false;
    for (const char *p = id + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return false;
    memcpy(hex, id + 7, ART_HEX_LEN + 1);
    return true;
}

static void art_download(api_t *api, http_req_t *req, const char *id)
{
    char hex[ART_HEX_LEN + 1];
    if (!art_id_parse(id, hex)) {
        api_reply_error(api, req, 400, NULL,
                        "invalid artifact id \"%.80s\": expected sha256:<64 lowercase hex digits>",
                        id);
        return;
    }
    art_call_t *c = art_call_new(api, req);
    memcpy(c->hex, hex, sizeof(hex));
    art_set_path(c);
    uv_timer_init(api->loop, &c->pace);
    c->pace.data = c;
    c->fs.data = c;
    int rc = uv_fs_open(api->loop, &c->fs, c->path, O_RDONLY | O_CLOEXEC, 0, art_on_open);
    if (rc)
        art_error(c, 500, "cannot open the artifact: %s", uv_strerror(rc));
}

void api_artifacts_handle(api_t *api, http_req_t *req, const char *rest)
{
    bool collection = *rest == '\0' || strcmp(rest, "/") == 0;
    bool get = strcmp(req->method, "GET") == 0 || strcmp(req->method, "HEAD") == 0;
    if (collection ? strcmp(req->method, "POST") != 0 : !get) {
        api_reply_method_not_allowed(api, req, collection ? "POST" : "GET, HEAD");
        return;
    }
    if (!api->opts.data_dir) {
        api_reply_error(api, req, 503, NULL,
                        "artifact storage is not configured on this server (no data directory)");
        return;
    }
    if (collection)
        art_upload(api, req);
    else
        art_download(api, req, rest + 1);
}
