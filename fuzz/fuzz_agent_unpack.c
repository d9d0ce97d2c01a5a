/* Fuzz artifact_unpack with whatever bytes come: written to a file in a
 * private work directory, unpacked beside it with small limits. Beyond "no
 * crash, no leak", every run checks the promises of artifact.h: on failure
 * no dest and no temporary directory remain; on success the tree is
 * read-only, holds only files, directories and symlinks, has no setuid or
 * setgid bit, and every symlink that resolves stays inside it. In both
 * cases nothing appears beside the archive or above the work directory. */
#include "agent/artifact.h"
#include "core/log.h"

#include <dirent.h>
#include <fcntl.h>
#include <fts.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char base[64];
static char work[96];
static char in[128];
static char dest[128];

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        abort();
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* The unpacked tree keeps the promises made in artifact.h. */
static void check_tree(void)
{
    char real_dest[PATH_MAX];
    if (!realpath(dest, real_dest))
        abort();
    size_t rlen = strlen(real_dest);
    char *paths[] = {dest, NULL};
    FTS *t = fts_open(paths, FTS_PHYSICAL | FTS_NOCHDIR, NULL);
    if (!t)
        abort();
    FTSENT *f;
    while ((f = fts_read(t))) {
        mode_t m = f->fts_statp->st_mode;
        switch (f->fts_info) {
        case FTS_F:
        case FTS_D:
            if (m & 0222 || m & 06000)
                abort();
            break;
        case FTS_DP: break;
        case FTS_SL:
        case FTS_SLNONE: {
            char r[PATH_MAX];
            if (realpath(f->fts_path, r) &&
                !(strncmp(r, real_dest, rlen) == 0 && (r[rlen] == '/' || r[rlen] == '\0')))
                abort(); /* a symlink resolving outside the artifact */
            break;
        }
        default: abort(); /* device, fifo, socket, unreadable */
        }
    }
    fts_close(t);
}

static void cleanup(void)
{
    artifact_remove(base, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (!base[0]) {
        log_setup(LOG_OFF, LOG_TEXT);
        snprintf(base, sizeof(base), "/tmp/fuzz-agent-unpack-XXXXXX");
        if (!mkdtemp(base))
            abort();
        snprintf(work, sizeof(work), "%s/w", base);
        snprintf(in, sizeof(in), "%s/in", work);
        snprintf(dest, sizeof(dest), "%s/dest", work);
        if (mkdir(work, 0700) != 0)
            abort();
        atexit(cleanup);
    }
    int fd = open(in, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, data, size) != (ssize_t)size)
        abort();
    close(fd);
    artifact_limits_t lim = {.max_total_bytes = 1 << 20, .max_entries = 64};
    err_t err = {0};
    int rc = artifact_unpack(in, dest, &lim, &err);
    if (rc == 0) {
        check_tree();
        if (artifact_remove(dest, NULL) != 0)
            abort();
    } else if (access(dest, F_OK) == 0 || !err.msg[0]) {
        abort(); /* refused, yet dest exists, or no reason given */
    }
    unlink(in);
    if (count_entries(work) != 0 || count_entries(base) != 1)
        abort(); /* a temp dir left, or something written outside */
    return 0;
}
