/* Artifacts on a node: each is downloaded once, checked against its sha256,
 * unpacked once into data_dir/artifacts/<hex>/ (read-only) and shared by
 * every instance that runs it; an instance's sandbox gets a symlink to each
 * top-level entry, so relative paths in `cmd` work and writes stay in the
 * sandbox. Downloads and unpacking run on the thread pool; instances that
 * ask while one is in progress wait for the same result. */
#include "agent/agent_internal.h"

#include "agent/artifact.h"
#include "core/alloc.h"
#include "core/log.h"
#include "core/str.h"
#include "http/client.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct fetch_waiter {
    fetch_cb cb;
    void *data;
    struct fetch_waiter *next;
} fetch_waiter_t;

typedef struct fetch {
    uv_work_t work;
    agent_t *agent;
    char *ref; /* "sha256:<hex>" or a URL */
    char *url; /* where to download from */
    char *dir; /* unpacked tree (the result) */
    int rc;
    err_t err;
    fetch_waiter_t *waiters;
    struct fetch *next;
} fetch_t;

static int fetch_write(const char *p, size_t n, void *data)
{
    int fd = *(int *)data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return 1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Runs on the pool: download to a temp file, verify, unpack. */
static void fetch_work(uv_work_t *w)
{
    fetch_t *f = w->data;
    struct stat st;
    if (stat(f->dir, &st) == 0)
        return; /* unpacked by an earlier agent run */
    char *tmp = xasprintf("%s.download", f->dir);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        f->rc = err_set(&f->err, -errno, "cannot create %s: %s", tmp, strerror(errno));
        free(tmp);
        return;
    }
    http_client_resp_t resp;
    http_client_resp_init(&resp, 64 * 1024);
    f->rc = http_client_stream("GET", f->url, NULL, 0, NULL, 0, fetch_write, &fd, &resp, &f->err);
    close(fd);
    if (!f->rc && resp.status != 200)
        f->rc = err_set(&f->err, -ENOENT, "downloading artifact %s from %s: HTTP %d", f->ref,
                        f->url, resp.status);
    http_client_resp_free(&resp);
    char id[ARTIFACT_ID_LEN + 1];
    if (!f->rc && !(f->rc = artifact_file_id(tmp, id, &f->err)) &&
        str_has_prefix(f->ref, "sha256:") && strcmp(id, f->ref) != 0)
        f->rc = err_set(&f->err, -EBADMSG, "artifact %s: downloaded content has %s", f->ref, id);
    if (!f->rc)
        f->rc = artifact_unpack(tmp, f->dir, NULL, &f->err);
    unlink(tmp);
    free(tmp);
}

static void fetch_after(uv_work_t *w, int status)
{
    fetch_t *f = w->data;
    agent_t *a = f->agent;
    a->calls_in_flight--;
    for (fetch_t **pp = &a->fetches; *pp; pp = &(*pp)->next)
        if (*pp == f) {
            *pp = f->next;
            break;
        }
    if (f->rc)
        log_warn("agent", "artifact %s: %s", f->ref, err_str(&f->err, f->rc));
    else
        log_info("agent", "artifact %s ready in %s", f->ref, f->dir);
    for (fetch_waiter_t *wt = f->waiters, *next; wt; wt = next) {
        next = wt->next;
        wt->cb(f->rc, f->rc ? &f->err : NULL, f->dir, wt->data);
        free(wt);
    }
    free(f->ref);
    free(f->url);
    free(f->dir);
    free(f);
    if (a->stopping)
        agent_maybe_done(a);
}

void agent_fetch_forget(agent_t *a, void *data)
{
    for (fetch_t *f = a->fetches; f; f = f->next) {
        for (fetch_waiter_t **pp = &f->waiters; *pp;) {
            if ((*pp)->data == data) {
                fetch_waiter_t *gone = *pp;
                *pp = gone->next;
                free(gone);
            } else {
                pp = &(*pp)->next;
            }
        }
    }
}

int agent_fetch(agent_t *a, const char *ref, fetch_cb cb, void *data, err_t *err)
{
    char hex[80];
    const char *url;
    char *own_url = NULL;
    if (artifact_id_valid(ref)) {
        snprintf(hex, sizeof(hex), "%s", ref + strlen("sha256:"));
        own_url = xasprintf("%s/v1/artifacts/%s", a->opts.server_url, ref);
        url = own_url;
    } else if (str_has_prefix(ref, "http://") || str_has_prefix(ref, "https://")) {
        /* A URL artifact is keyed by its URL's hash until downloaded. */
        unsigned long h = 5381;
        for (const char *p = ref; *p; p++)
            h = h * 33 + (unsigned char)*p;
        snprintf(hex, sizeof(hex), "url-%016lx", h);
        url = ref;
    } else {
        return err_set(err, -EINVAL,
                       "artifact %s: expected sha256:<64 hex> (drover push) or an http(s) URL",
                       ref);
    }
    fetch_waiter_t *wt = xcalloc(1, sizeof(*wt));
    wt->cb = cb;
    wt->data = data;
    for (fetch_t *f = a->fetches; f; f = f->next) {
        if (strcmp(f->ref, ref) == 0) {
            wt->next = f->waiters;
            f->waiters = wt;
            free(own_url);
            return 0;
        }
    }
    fetch_t *f = xcalloc(1, sizeof(*f));
    f->agent = a;
    f->ref = xstrdup(ref);
    f->url = xstrdup(url);
    f->dir = xasprintf("%s/artifacts/%s", a->opts.data_dir, hex);
    f->waiters = wt;
    f->next = a->fetches;
    a->fetches = f;
    f->work.data = f;
    free(own_url);
    a->calls_in_flight++;
    uv_queue_work(a->loop, &f->work, fetch_work, fetch_after);
    return 0;
}

int agent_link_sandbox(const char *tree, const char *sandbox, err_t *err)
{
    DIR *d = opendir(tree);
    if (!d)
        return err_set(err, -errno, "cannot open %s: %s", tree, strerror(errno));
    struct dirent *e;
    int rc = 0;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        char *src = xasprintf("%s/%s", tree, e->d_name);
        char *dst = xasprintf("%s/%s", sandbox, e->d_name);
        if (symlink(src, dst) && errno != EEXIST)
            rc = err_set(err, -errno, "cannot link %s into the sandbox: %s", e->d_name,
                         strerror(errno));
        free(src);
        free(dst);
        if (rc)
            break;
    }
    closedir(d);
    return rc;
}
