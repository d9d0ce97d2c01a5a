/* artifact: pack an app directory into a gzip'd tar and unpack one safely.
 *
 * Unpacking trusts nothing in the archive. libarchive parses it and writes
 * the files (archive_write_disk with SECURE_NODOTDOT and SECURE_SYMLINKS, so
 * nothing is ever written through a symlink), and every entry is checked
 * here first:
 *   - formats: the tar family only (ustar, pax, GNU tar, v7), compressed
 *     with gzip, bzip2, xz, lzma, lzip, zstd, lz4 or compress, all decoded
 *     in-process (no external decompressor is ever run). zip, cpio, 7z, iso
 *     and the rest are refused as "not a tar archive": an artifact is one
 *     image layer, and each extra reader is attack surface;
 *   - paths: no absolute path, no `..` component, shorter than PATH_MAX
 *     once placed under the destination (libarchive chdir()s for longer
 *     ones, which would move the cwd of every thread of the agent);
 *   - symlinks: the target is relative, its leading `..` components stay
 *     within the directories above the link, and no `..` follows a name
 *     (`l/../..` could climb out through a link `l -> .`);
 *   - hard links: the target is a path inside (same rules) naming a
 *     regular file already unpacked (a hard link to a symlink would move
 *     the symlink's base directory);
 *   - types: regular files, directories, symlinks and hard links only;
 *   - modes: setuid, setgid and sticky bits are dropped, directories keep
 *     u+rwx while unpacking; owners, xattrs (file capabilities), ACLs and
 *     file flags are never restored;
 *   - limits: entry count and the sum of file sizes (declared in the
 *     headers, and counted again while writing).
 *
 * libarchive's write_disk has no base-directory argument and chdir() is
 * process-wide, so entries are written at absolute paths under the real
 * path of the temporary directory (no symlink in it, or SECURE_SYMLINKS
 * would refuse it). That is why ARCHIVE_EXTRACT_SECURE_NOABSOLUTEPATHS is
 * not set: the entry's own path is refused if absolute before the prefix is
 * added.
 *
 * Known caveat: archive_write_disk_new() reads the umask by setting it to 0
 * and back (libarchive 3.6), so a file created by another thread in that
 * instant gets a umask of 0. */
#include "agent/artifact.h"

#include "core/alloc.h"
#include "core/log.h"

#include <archive.h>
#include <archive_entry.h>
#include <errno.h>
#include <fcntl.h>
#include <fts.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define ARTIFACT_DEFAULT_MAX_BYTES   (2ULL << 30)
#define ARTIFACT_DEFAULT_MAX_ENTRIES 100000ULL
#define ARTIFACT_IO_BLOCK            65536

/* Everything an entry check needs, and the counters across entries. */
typedef struct unpack {
    const char *root; /* real path of the temporary directory */
    size_t root_len;
    uint64_t max_bytes;
    uint64_t max_entries;
    uint64_t entries;
    uint64_t declared; /* sum of file sizes from the headers */
    uint64_t written;  /* bytes actually handed to the disk writer */
    char name[128];    /* the current entry's name, quoted for messages */
} unpack_t;

/* Quote an archive-controlled name for an error message: bounded, and any
 * byte that could forge a log line or a terminal sequence is escaped. */
static void quote_name(const char *s, char *out, size_t n)
{
    size_t o = 0;
    if (!s)
        s = "";
    for (; *s && o + 5 < n; s++) {
        unsigned char c = (unsigned char)*s;
        if (c < 0x20 || c == 0x7f || c == '"' || c == '\\')
            o += (size_t)snprintf(out + o, n - o, "\\x%02x", c);
        else
            out[o++] = (char)c;
    }
    if (*s && o + 4 <= n) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
}

/* libarchive's OK and WARN mean "done" (a WARN is, e.g., a time that could
 * not be set); RETRY, FAILED and FATAL all stop the unpack. */
static bool la_failed(la_ssize_t r)
{
    return r != ARCHIVE_OK && r != ARCHIVE_WARN;
}

static int entry_err(err_t *err, const unpack_t *u, int code, const char *what)
{
    return err_set(err, code, "archive entry \"%s\": %s", u->name, what);
}

/* Lexically normalize an entry path into out ("./a//b/" -> "a/b"). Returns
 * 0, or a reason: absolute, `..` anywhere (escaping or not: a `..` that
 * stays inside is never needed and hides intent), too long. */
static const char *path_normalize(const char *p, char *out, size_t n)
{
    if (!p || !*p)
        return "empty path";
    if (p[0] == '/')
        return "absolute path";
    size_t o = 0;
    int depth = 0;
    bool dotdot = false;
    while (*p) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            dotdot = true;
            if (--depth < 0)
                return "path escapes the artifact directory";
        } else if (len > 0 && !(len == 1 && p[0] == '.')) {
            depth++;
            if (o + len + 2 > n)
                return "path too long";
            if (o)
                out[o++] = '/';
            memcpy(out + o, p, len);
            o += len;
        }
        p += len;
        if (*p == '/')
            p++;
    }
    if (dotdot)
        return "path has a .. component";
    out[o] = '\0';
    return NULL;
}

/* A symlink stored at `norm` (normalized) must resolve inside the root
 * whatever the links around it: relative, leading `..` no deeper than the
 * link's own directory, no `..` after a name. Returns a reason or NULL. */
static const char *symlink_check(const char *norm, const char *target)
{
    if (!target || !*target)
        return "symlink with an empty target";
    if (strlen(target) >= PATH_MAX)
        return "symlink target too long";
    if (target[0] == '/')
        return "symlink target is absolute";
    int depth = 0; /* directories above the link inside the root */
    for (const char *s = norm; *s; s++)
        if (*s == '/')
            depth++;
    bool named = false;
    for (const char *p = target; *p;) {
        const char *e = strchr(p, '/');
        size_t len = e ? (size_t)(e - p) : strlen(p);
        if (len == 2 && p[0] == '.' && p[1] == '.') {
            if (named)
                return "symlink target has .. after a name";
            if (--depth < 0)
                return "symlink target points outside the artifact directory";
        } else if (len > 0 && !(len == 1 && p[0] == '.')) {
            named = true;
        }
        p += len;
        if (*p == '/')
            p++;
    }
    return NULL;
}

/* root + "/" + rel into out (PATH_MAX bytes); -ENAMETOOLONG when it would
 * not fit. */
static int path_join(const unpack_t *u, const char *rel, char *out)
{
    size_t n = strlen(rel);
    if (u->root_len + 1 + n >= PATH_MAX)
        return -ENAMETOOLONG;
    memcpy(out, u->root, u->root_len);
    out[u->root_len] = '/';
    memcpy(out + u->root_len + 1, rel, n + 1);
    return 0;
}

static const char *type_name(mode_t t)
{
    switch (t) {
    case AE_IFCHR: return "character device";
    case AE_IFBLK: return "block device";
    case AE_IFIFO: return "fifo";
    case AE_IFSOCK: return "socket";
    default: return "file of unknown type";
    }
}

/* Check one entry and rewrite it to be written under the root. Returns 1
 * to skip it (the root directory itself), 0 to write it, or an error. */
static int entry_prepare(unpack_t *u, struct archive_entry *e, err_t *err)
{
    char norm[PATH_MAX];
    char full[PATH_MAX];
    char msg[256];
    const char *why = path_normalize(archive_entry_pathname(e), norm, sizeof(norm));
    if (why)
        return entry_err(err, u, -EPERM, why);
    const char *link = archive_entry_hardlink(e);
    mode_t type = archive_entry_filetype(e);
    if (!*norm) {
        if (type == AE_IFDIR && !link)
            return 1;
        return entry_err(err, u, -EPERM, "names the artifact directory itself");
    }
    if (path_join(u, norm, full) < 0)
        return entry_err(err, u, -ENAMETOOLONG, "path too long");

    if (link) {
        char lnorm[PATH_MAX];
        char lfull[PATH_MAX];
        why = path_normalize(link, lnorm, sizeof(lnorm));
        if (why) {
            snprintf(msg, sizeof(msg), "hard link target: %s", why);
            return entry_err(err, u, -EPERM, msg);
        }
        if (!*lnorm || path_join(u, lnorm, lfull) < 0)
            return entry_err(err, u, -EPERM, "bad hard link target");
        struct stat st;
        if (lstat(lfull, &st) != 0 || !S_ISREG(st.st_mode))
            return entry_err(err, u, -EPERM,
                             "hard link target is not a regular file unpacked before it");
        archive_entry_set_hardlink(e, lfull);
    } else if (type == AE_IFLNK) {
        why = symlink_check(norm, archive_entry_symlink(e));
        if (why)
            return entry_err(err, u, -EPERM, why);
    } else if (type != AE_IFREG && type != AE_IFDIR) {
        snprintf(msg, sizeof(msg), "%s not allowed (only files, directories and links)",
                 type_name(type));
        return entry_err(err, u, -EPERM, msg);
    }

    if (type == AE_IFREG || link) {
        int64_t size = archive_entry_size_is_set(e) ? archive_entry_size(e) : 0;
        if (size < 0)
            return entry_err(err, u, -EINVAL, "negative size");
        if ((uint64_t)size > u->max_bytes - u->declared) {
            snprintf(msg, sizeof(msg), "unpacked size exceeds the limit of %llu bytes",
                     (unsigned long long)u->max_bytes);
            return entry_err(err, u, -EFBIG, msg);
        }
        u->declared += (uint64_t)size;
    }
    mode_t perm = archive_entry_perm(e) & 0777;
    if (type == AE_IFDIR)
        perm |= 0700; /* the unpacker (and the remover) must enter it */
    archive_entry_set_perm(e, perm);
    archive_entry_set_pathname(e, full);
    return 0;
}

static int entry_copy(unpack_t *u, struct archive *a, struct archive *w, err_t *err)
{
    char msg[256];
    for (;;) {
        const void *buf;
        size_t size;
        la_int64_t off;
        int r = archive_read_data_block(a, &buf, &size, &off);
        if (r == ARCHIVE_EOF)
            return 0;
        if (la_failed(r)) {
            snprintf(msg, sizeof(msg), "%s", archive_error_string(a));
            return entry_err(err, u, -EIO, msg);
        }
        if (size > u->max_bytes - u->written) {
            snprintf(msg, sizeof(msg), "unpacked size exceeds the limit of %llu bytes",
                     (unsigned long long)u->max_bytes);
            return entry_err(err, u, -EFBIG, msg);
        }
        u->written += size;
        if (la_failed(archive_write_data_block(w, buf, size, off))) {
            snprintf(msg, sizeof(msg), "%s", archive_error_string(w));
            return entry_err(err, u, -EIO, msg);
        }
    }
}

static struct archive *reader_new(void)
{
    struct archive *a = archive_read_new();
    archive_read_support_format_tar(a);
    /* Only filters libarchive decodes itself here (all linked in on
     * Debian); filter_all would fall back to running external programs
     * (lrzip, lzop, grzip) on hostile input. */
    archive_read_support_filter_gzip(a);
    archive_read_support_filter_bzip2(a);
    archive_read_support_filter_xz(a);
    archive_read_support_filter_lzma(a);
    archive_read_support_filter_lzip(a);
    archive_read_support_filter_zstd(a);
    archive_read_support_filter_lz4(a);
    archive_read_support_filter_compress(a);
    return a;
}

static int unpack_entries(unpack_t *u, const char *archive, struct archive *a, struct archive *w,
                          err_t *err)
{
    char msg[256];
    for (;;) {
        struct archive_entry *e;
        int r = archive_read_next_header(a, &e);
        if (r == ARCHIVE_EOF)
            return 0;
        if (la_failed(r)) {
            if (u->entries == 0)
                return err_set(err, -EINVAL, "not a tar archive: %s: %s", archive,
                               archive_error_string(a));
            return err_set(err, -EINVAL, "archive %s, after entry \"%s\": %s", archive, u->name,
                           archive_error_string(a));
        }
        quote_name(archive_entry_pathname(e), u->name, sizeof(u->name));
        if (++u->entries > u->max_entries) {
            snprintf(msg, sizeof(msg), "more than %llu entries",
                     (unsigned long long)u->max_entries);
            return entry_err(err, u, -EFBIG, msg);
        }
        int rc = entry_prepare(u, e, err);
        if (rc < 0)
            return rc;
        if (rc == 1)
            continue;
        if (la_failed(archive_write_header(w, e))) {
            snprintf(msg, sizeof(msg), "%s", archive_error_string(w));
            return entry_err(err, u, -EPERM, msg);
        }
        if (archive_entry_size(e) > 0) {
            rc = entry_copy(u, a, w, err);
            if (rc < 0)
                return rc;
        }
        if (la_failed(archive_write_finish_entry(w))) {
            snprintf(msg, sizeof(msg), "%s", archive_error_string(w));
            return entry_err(err, u, -EIO, msg);
        }
    }
}

/* Unpack into root (an empty directory). */
static int unpack_into(const char *archive, const char *root, const artifact_limits_t *lim,
                       err_t *err)
{
    unpack_t u = {
        .root = root,
        .root_len = strlen(root),
        .max_bytes =
            lim && lim->max_total_bytes ? lim->max_total_bytes : ARTIFACT_DEFAULT_MAX_BYTES,
        .max_entries = lim && lim->max_entries ? lim->max_entries : ARTIFACT_DEFAULT_MAX_ENTRIES,
    };
    int fd = open(archive, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "cannot open archive %s: %s", archive, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return err_set(err, -EINVAL, "not a tar archive: %s is not a regular file", archive);
    }
    if (st.st_size == 0) {
        close(fd);
        return err_set(err, -EINVAL, "not a tar archive: %s is empty", archive);
    }
    struct archive *a = reader_new();
    struct archive *w = archive_write_disk_new();
    archive_write_disk_set_options(w, ARCHIVE_EXTRACT_SECURE_NODOTDOT |
                                          ARCHIVE_EXTRACT_SECURE_SYMLINKS | ARCHIVE_EXTRACT_PERM |
                                          ARCHIVE_EXTRACT_TIME);
    int rc;
    if (archive_read_open_fd(a, fd, ARTIFACT_IO_BLOCK) != ARCHIVE_OK)
        rc = err_set(err, -EINVAL, "not a tar archive: %s: %s", archive, archive_error_string(a));
    else
        rc = unpack_entries(&u, archive, a, w, err);
    /* Close applies the deferred directory modes and times. */
    if (la_failed(archive_write_close(w)) && rc == 0)
        rc = err_set(err, -EIO, "unpacking %s: %s", archive, archive_error_string(w));
    archive_write_free(w);
    archive_read_free(a);
    close(fd);
    return rc;
}

/* Walk a tree without following symlinks or crossing mounts, and without
 * chdir (this runs on thread-pool threads). */
static FTS *tree_open(const char *dir, int (*cmp)(const FTSENT **, const FTSENT **))
{
    char *paths[] = {(char *)dir, NULL};
    return fts_open(paths, FTS_PHYSICAL | FTS_NOCHDIR | FTS_XDEV, cmp);
}

/* a-w on everything but symlinks (whose mode means nothing), directories
 * after their contents. */
static int make_readonly(const char *root, err_t *err)
{
    if (chmod(root, 0755) != 0)
        return err_set(err, -errno, "chmod %s: %s", root, strerror(errno));
    FTS *t = tree_open(root, NULL);
    if (!t)
        return err_set(err, -errno, "walk %s: %s", root, strerror(errno));
    int rc = 0;
    FTSENT *f;
    while (rc == 0 && (errno = 0, f = fts_read(t))) {
        switch (f->fts_info) {
        case FTS_F:
        case FTS_DP:
            if (chmod(f->fts_path, f->fts_statp->st_mode & 0555) != 0)
                rc = err_set(err, -errno, "chmod %s: %s", f->fts_path, strerror(errno));
            break;
        case FTS_D:
        case FTS_SL:
        case FTS_SLNONE: break;
        case FTS_DNR:
        case FTS_ERR:
        case FTS_NS:
            rc = err_set(err, -f->fts_errno, "walk %s: %s", f->fts_path, strerror(f->fts_errno));
            break;
        default: rc = err_set(err, -EPERM, "unexpected file type at %s", f->fts_path);
        }
    }
    if (rc == 0 && errno != 0)
        rc = err_set(err, -errno, "walk %s: %s", root, strerror(errno));
    fts_close(t);
    return rc;
}

/* Removal must first give the owner write (and search) permission back on
 * each directory, since unpacked trees are read-only; fts hands a directory
 * over before reading it, so even a 0000 directory is opened after the
 * chmod. */
int artifact_remove(const char *dir, err_t *err)
{
    struct stat st;
    if (lstat(dir, &st) != 0) {
        if (errno == ENOENT)
            return 0;
        return err_set(err, -errno, "remove %s: %s", dir, strerror(errno));
    }
    FTS *t = tree_open(dir, NULL);
    if (!t)
        return err_set(err, -errno, "remove %s: %s", dir, strerror(errno));
    int rc = 0;
    FTSENT *f;
    while ((errno = 0, f = fts_read(t))) {
        int r = 0;
        switch (f->fts_info) {
        case FTS_D: r = chmod(f->fts_path, (f->fts_statp->st_mode & 07777) | 0700); break;
        case FTS_DP: r = rmdir(f->fts_path); break;
        case FTS_DNR:
        case FTS_ERR:
        case FTS_NS:
            errno = f->fts_errno;
            r = -1;
            break;
        case FTS_DC: break;
        default: r = unlink(f->fts_path);
        }
        if (r != 0 && rc == 0)
            rc = err_set(err, -errno, "remove %s: %s", f->fts_path, strerror(errno));
    }
    if (rc == 0 && errno != 0)
        rc = err_set(err, -errno, "remove %s: %s", dir, strerror(errno));
    fts_close(t);
    return rc;
}

/* Split dest into the real path of its parent and its last component. */
static int dest_split(const char *dest, char **parent, char **base, err_t *err)
{
    size_t n = strlen(dest);
    while (n > 1 && dest[n - 1] == '/')
        n--;
    char *d = xstrndup(dest, n);
    char *slash = strrchr(d, '/');
    const char *b = slash ? slash + 1 : d;
    const char *dir = slash ? (slash == d ? "/" : d) : ".";
    if (!*b || strcmp(b, ".") == 0 || strcmp(b, "..") == 0) {
        free(d);
        return err_set(err, -EINVAL, "bad artifact destination \"%s\"", dest);
    }
    *base = xstrdup(b);
    if (slash)
        *slash = '\0';
    char *real = realpath(dir, NULL);
    if (!real) {
        int e = errno;
        free(d);
        free(*base);
        return err_set(err, -e, "artifact destination %s: parent directory: %s", dest, strerror(e));
    }
    *parent = real;
    free(d);
    return 0;
}

int artifact_unpack(const char *archive, const char *dest, const artifact_limits_t *lim, err_t *err)
{
    struct stat st;
    if (lstat(dest, &st) == 0)
        return err_set(err, -EEXIST, "artifact destination %s already exists", dest);
    if (errno != ENOENT)
        return err_set(err, -errno, "artifact destination %s: %s", dest, strerror(errno));
    char *parent = NULL, *base = NULL;
    int rc = dest_split(dest, &parent, &base, err);
    if (rc < 0)
        return rc;
    char *tmp = xasprintf("%s/%s.tmp-XXXXXX", strcmp(parent, "/") ? parent : "", base);
    char *final = xasprintf("%s/%s", strcmp(parent, "/") ? parent : "", base);
    if (!mkdtemp(tmp)) {
        rc = err_set(err, -errno, "create %s: %s", tmp, strerror(errno));
        goto out;
    }
    rc = unpack_into(archive, tmp, lim, err);
    if (rc == 0)
        rc = make_readonly(tmp, err);
    /* NOREPLACE: a plain rename would replace an empty directory that
     * appeared meanwhile. */
    if (rc == 0 && renameat2(AT_FDCWD, tmp, AT_FDCWD, final, RENAME_NOREPLACE) != 0)
        rc = err_set(err, -errno, "rename %s to %s: %s", tmp, final, strerror(errno));
    if (rc < 0)
        artifact_remove(tmp, NULL);
    else
        log_debug("artifact", "unpacked %s into %s", archive, final);
out:
    free(tmp);
    free(final);
    free(parent);
    free(base);
    return rc;
}

/* ---- pack --------------------------------------------------------------- */

/* Name order makes the archive (and so its id) depend only on the content. */
static int by_name(const FTSENT **a, const FTSENT **b)
{
    return strcmp((*a)->fts_name, (*b)->fts_name);
}

static int pack_file(struct archive *a, struct archive_entry *e, const FTSENT *f, err_t *err)
{
    int fd = open(f->fts_accpath, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "open %s: %s", f->fts_path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = err_set(err, -EINVAL, "%s changed while packing", f->fts_path);
        goto out;
    }
    archive_entry_set_size(e, st.st_size);
    if (la_failed(archive_write_header(a, e))) {
        rc = err_set(err, -EIO, "pack %s: %s", f->fts_path, archive_error_string(a));
        goto out;
    }
    char *buf = xmalloc(ARTIFACT_IO_BLOCK);
    off_t left = st.st_size;
    while (left > 0) {
        ssize_t n = read(fd, buf, ARTIFACT_IO_BLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            /* The header promised st_size bytes: a shorter file would
             * corrupt the archive. */
            rc = n < 0 ? err_set(err, -errno, "read %s: %s", f->fts_path, strerror(errno))
                       : err_set(err, -EIO, "%s shrank while packing", f->fts_path);
            break;
        }
        if (n > left)
            n = (ssize_t)left;
        if (archive_write_data(a, buf, (size_t)n) < 0) {
            rc = err_set(err, -EIO, "pack %s: %s", f->fts_path, archive_error_string(a));
            break;
        }
        left -= n;
    }
    free(buf);
out:
    close(fd);
    return rc;
}

/* Files never packed: the archive being written and the one it replaces,
 * when `out` lies inside the packed directory. */
typedef struct pack_skip {
    struct stat tmp;
    struct stat old;
    bool have_old;
} pack_skip_t;

static bool pack_skipped(const pack_skip_t *skip, const struct stat *st)
{
    return (st->st_dev == skip->tmp.st_dev && st->st_ino == skip->tmp.st_ino) ||
           (skip->have_old && st->st_dev == skip->old.st_dev && st->st_ino == skip->old.st_ino);
}

static int pack_entry(struct archive *a, const FTSENT *f, size_t dir_len, const pack_skip_t *skip,
                      err_t *err)
{
    const struct stat *st = f->fts_statp;
    if (f->fts_info == FTS_F && pack_skipped(skip, st))
        return 0;
    const char *rel = f->fts_path + dir_len;
    while (*rel == '/')
        rel++;
    struct archive_entry *e = archive_entry_new();
    archive_entry_set_pathname(e, rel);
    archive_entry_set_perm(e, st->st_mode & 0777);
    archive_entry_set_uid(e, 0);
    archive_entry_set_gid(e, 0);
    archive_entry_set_uname(e, "root");
    archive_entry_set_gname(e, "root");
    archive_entry_set_mtime(e, st->st_mtim.tv_sec, 0);
    int rc = 0;
    switch (f->fts_info) {
    case FTS_D:
        archive_entry_set_filetype(e, AE_IFDIR);
        if (la_failed(archive_write_header(a, e)))
            rc = err_set(err, -EIO, "pack %s: %s", f->fts_path, archive_error_string(a));
        break;
    case FTS_F:
        archive_entry_set_filetype(e, AE_IFREG);
        rc = pack_file(a, e, f, err);
        break;
    case FTS_SL:
    case FTS_SLNONE: {
        char target[PATH_MAX];
        ssize_t n = readlink(f->fts_accpath, target, sizeof(target) - 1);
        if (n < 0) {
            rc = err_set(err, -errno, "readlink %s: %s", f->fts_path, strerror(errno));
            break;
        }
        target[n] = '\0';
        /* Fail here rather than ship an artifact no agent will unpack. */
        const char *why = symlink_check(rel, target);
        if (why) {
            rc = err_set(err, -EPERM, "pack %s: symlink to \"%s\": %s (unpack refuses it)",
                         f->fts_path, target, why);
            break;
        }
        archive_entry_set_filetype(e, AE_IFLNK);
        archive_entry_set_symlink(e, target);
        if (la_failed(archive_write_header(a, e)))
            rc = err_set(err, -EIO, "pack %s: %s", f->fts_path, archive_error_string(a));
        break;
    }
    default: log_info("artifact", "pack: skipping %s (not a file, directory or symlink)", rel);
    }
    archive_entry_free(e);
    return rc;
}

static int pack_tree(const char *dir, struct archive *a, const pack_skip_t *skip, err_t *err)
{
    FTS *t = tree_open(dir, by_name);
    if (!t)
        return err_set(err, -errno, "pack %s: %s", dir, strerror(errno));
    size_t dir_len = strlen(dir);
    int rc = 0;
    FTSENT *f;
    while (rc == 0 && (errno = 0, f = fts_read(t))) {
        switch (f->fts_info) {
        case FTS_DP:
        case FTS_DC: break;
        case FTS_DNR:
        case FTS_ERR:
        case FTS_NS:
            rc = err_set(err, -f->fts_errno, "pack %s: %s", f->fts_path, strerror(f->fts_errno));
            break;
        case FTS_D:
            if (f->fts_level == 0)
                break;
            /* fallthrough */
        default: rc = pack_entry(a, f, dir_len, skip, err);
        }
    }
    if (rc == 0 && errno != 0)
        rc = err_set(err, -errno, "pack %s: %s", dir, strerror(errno));
    fts_close(t);
    return rc;
}

int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err)
{
    struct stat st;
    if (stat(dir, &st) != 0)
        return err_set(err, -errno, "pack %s: %s", dir, strerror(errno));
    if (!S_ISDIR(st.st_mode))
        return err_set(err, -ENOTDIR, "pack %s: not a directory", dir);
    /* Written beside `out` and renamed: a reader never sees half an
     * archive under the final name. */
    char *tmp = xasprintf("%s.tmp-XXXXXX", out);
    int fd = mkostemp(tmp, O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        free(tmp);
        return err_set(err, -e, "create %s: %s", out, strerror(e));
    }
    pack_skip_t skip;
    memset(&skip, 0, sizeof(skip));
    fstat(fd, &skip.tmp);
    skip.have_old = stat(out, &skip.old) == 0;
    fchmod(fd, 0644);
    struct archive *a = archive_write_new();
    archive_write_add_filter_gzip(a);
    archive_write_set_format_pax_restricted(a);
    /* No time in the gzip header: the same tree packs to the same id. */
    archive_write_set_options(a, "gzip:!timestamp");
    int rc = 0;
    if (archive_write_open_fd(a, fd) != ARCHIVE_OK)
        rc = err_set(err, -EIO, "pack %s: %s", out, archive_error_string(a));
    else
        rc = pack_tree(dir, a, &skip, err);
    if (archive_write_close(a) != ARCHIVE_OK && rc == 0)
        rc = err_set(err, -EIO, "pack %s: %s", out, archive_error_string(a));
    archive_write_free(a);
    if (close(fd) != 0 && rc == 0)
        rc = err_set(err, -errno, "pack %s: %s", out, strerror(errno));
    if (rc == 0 && rename(tmp, out) != 0)
        rc = err_set(err, -errno, "rename %s to %s: %s", tmp, out, strerror(errno));
    if (rc < 0)
        unlink(tmp);
    free(tmp);
    if (rc == 0)
        rc = artifact_file_id(out, id_out, err);
    return rc;
}

/* ---- ids ---------------------------------------------------------------- */

int artifact_file_id(const char *path, char *id_out, err_t *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return err_set(err, -errno, "open %s: %s", path, strerror(errno));
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    if (!ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
        EVP_MD_CTX_free(ctx);
        close(fd);
        return err_set(err, -EIO, "sha256: cannot initialize OpenSSL digest");
    }
    char *buf = xmalloc(ARTIFACT_IO_BLOCK);
    int rc = 0;
    for (;;) {
        ssize_t n = read(fd, buf, ARTIFACT_IO_BLOCK);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = err_set(err, -errno, "read %s: %s", path, strerror(errno));
            break;
        }
        if (n == 0)
            break;
        EVP_DigestUpdate(ctx, buf, (size_t)n);
    }
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (rc == 0 && EVP_DigestFinal_ex(ctx, md, &mdlen) != 1)
        rc = err_set(err, -EIO, "sha256 of %s failed", path);
    if (rc == 0) {
        static const char hex[] = "0123456789abcdef";
        memcpy(id_out, "sha256:", 7);
        for (unsigned i = 0; i < mdlen; i++) {
            id_out[7 + 2 * i] = hex[md[i] >> 4];
            id_out[8 + 2 * i] = hex[md[i] & 15];
        }
        id_out[7 + 2 * mdlen] = '\0';
    }
    free(buf);
    EVP_MD_CTX_free(ctx);
    close(fd);
    return rc;
}

int artifact_id_valid(const char *s)
{
    if (!s || strncmp(s, "sha256:", 7) != 0 || strlen(s) != ARTIFACT_ID_LEN)
        return 0;
    for (const char *p = s + 7; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}
