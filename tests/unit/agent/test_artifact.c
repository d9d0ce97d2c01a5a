/* Artifacts on a real filesystem: pack a directory and unpack it back, and
 * feed the unpacker hostile archives built here with libarchive's writer
 * (and a few made by the tar command). Each test works in its own temp
 * directory laid out as <base>/w/<archive, dest>, so anything written
 * outside dest shows up as an extra file in <base> or <base>/w. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/artifact.h"
#include "core/log.h"

#include <archive.h>
#include <archive_entry.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <grp.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- fixtures ----------------------------------------------------------- */

typedef struct fx {
    char base[64];
    char work[128];
    char archive[192];
    char dest[192];
} fx_t;

static int fx_setup(void **state)
{
    fx_t *f = calloc(1, sizeof(*f));
    snprintf(f->base, sizeof(f->base), "/tmp/drover-artifact-XXXXXX");
    assert_non_null(mkdtemp(f->base));
    snprintf(f->work, sizeof(f->work), "%s/w", f->base);
    assert_int_equal(mkdir(f->work, 0755), 0);
    snprintf(f->archive, sizeof(f->archive), "%s/in.tar", f->work);
    snprintf(f->dest, sizeof(f->dest), "%s/dest", f->work);
    *state = f;
    return 0;
}

static int fx_teardown(void **state)
{
    fx_t *f = *state;
    assert_int_equal(artifact_remove(f->base, NULL), 0);
    assert_int_equal(access(f->base, F_OK), -1);
    free(f);
    return 0;
}

static void write_file(const char *path, const char *content, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    assert_true(fd >= 0);
    size_t n = strlen(content);
    assert_int_equal(write(fd, content, n), (ssize_t)n);
    close(fd);
    assert_int_equal(chmod(path, mode), 0);
}

static char *read_file(const char *path, size_t *len)
{
    FILE *fp = fopen(path, "rb");
    assert_non_null(fp);
    static char buf[65536];
    size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
    fclose(fp);
    buf[n] = '\0';
    if (len)
        *len = n;
    return buf;
}

static mode_t mode_of(const char *path)
{
    struct stat st;
    assert_int_equal(lstat(path, &st), 0);
    return st.st_mode;
}

/* Number of entries in a directory (without . and ..). */
static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
            n++;
    closedir(d);
    return n;
}

/* ---- building archives -------------------------------------------------- */

#define HARDLINK (-1)
#define MODE_0   (-1) /* an explicit mode 0000 (0 means the default) */

typedef struct ent {
    const char *name;
    int type;           /* AE_IF* or HARDLINK */
    const char *target; /* symlink or hard link target; content of a file */
    int mode;           /* 0: 0644 (0755 for directories); MODE_0: 0000 */
    int64_t size;       /* regular file without content: this many bytes of 'x' */
} ent_t;

static void build(const char *path, const ent_t *ents, int n, int filter, int format)
{
    struct archive *a = archive_write_new();
    if (filter >= 0)
        assert_int_equal(archive_write_add_filter(a, filter), ARCHIVE_OK);
    assert_int_equal(archive_write_set_format(a, format), ARCHIVE_OK);
    assert_int_equal(archive_write_open_filename(a, path), ARCHIVE_OK);
    for (int i = 0; i < n; i++) {
        const ent_t *x = &ents[i];
        struct archive_entry *e = archive_entry_new();
        archive_entry_set_pathname(e, x->name);
        archive_entry_set_mtime(e, 1700000000, 0);
        int64_t size = 0;
        if (x->type == HARDLINK) {
            archive_entry_set_filetype(e, AE_IFREG);
            archive_entry_set_hardlink(e, x->target);
        } else {
            archive_entry_set_filetype(e, (mode_t)x->type);
            if (x->type == AE_IFLNK)
                archive_entry_set_symlink(e, x->target);
            if (x->type == AE_IFREG)
                size = x->target ? (int64_t)strlen(x->target) : x->size;
            if (x->type == AE_IFCHR || x->type == AE_IFBLK)
                archive_entry_set_rdev(e, makedev(1, 3));
        }
        mode_t perm = x->mode == MODE_0 ? 0 : x->mode ? (mode_t)x->mode : 0644;
        if (!x->mode && x->type == AE_IFDIR)
            perm = 0755;
        archive_entry_set_perm(e, perm);
        archive_entry_set_size(e, size);
        assert_true(archive_write_header(a, e) >= ARCHIVE_WARN);
        if (size > 0 && x->target) {
            archive_write_data(a, x->target, (size_t)size);
        } else {
            char block[4096];
            memset(block, 'x', sizeof(block));
            for (int64_t left = size; left > 0; left -= (int64_t)sizeof(block))
                archive_write_data(a, block, left < 4096 ? (size_t)left : sizeof(block));
        }
        archive_entry_free(e);
    }
    assert_int_equal(archive_write_close(a), ARCHIVE_OK);
    archive_write_free(a);
}

static void build_tar(const char *path, const ent_t *ents, int n)
{
    build(path, ents, n, ARCHIVE_FILTER_GZIP, ARCHIVE_FORMAT_TAR_PAX_RESTRICTED);
}

/* ---- pack and unpack ---------------------------------------------------- */

static void make_src(const char *src)
{
    char p[256];
    assert_int_equal(mkdir(src, 0755), 0);
    snprintf(p, sizeof(p), "%s/a.txt", src);
    write_file(p, "hello\n", 0644);
    snprintf(p, sizeof(p), "%s/bin", src);
    assert_int_equal(mkdir(p, 0750), 0);
    snprintf(p, sizeof(p), "%s/bin/run.sh", src);
    write_file(p, "#!/bin/sh\necho run\n", 0755);
    snprintf(p, sizeof(p), "%s/bin/suid", src);
    write_file(p, "s", 04755);
    snprintf(p, sizeof(p), "%s/sub", src);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/sub/dir", src);
    assert_int_equal(mkdir(p, 0700), 0);
    snprintf(p, sizeof(p), "%s/sub/dir/deep.txt", src);
    write_file(p, "deep", 0600);
    snprintf(p, sizeof(p), "%s/sub/dir/up", src);
    assert_int_equal(symlink("../../a.txt", p), 0);
    snprintf(p, sizeof(p), "%s/link", src);
    assert_int_equal(symlink("a.txt", p), 0);
    snprintf(p, sizeof(p), "%s/empty", src);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(p, sizeof(p), "%s/fifo", src);
    assert_int_equal(mkfifo(p, 0644), 0);
}

static void expect_file(const char *dest, const char *rel, const char *content, mode_t mode)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dest, rel);
    assert_string_equal(read_file(p, NULL), content);
    mode_t m = mode_of(p);
    assert_true(S_ISREG(m));
    if ((m & 07777) != mode)
        fail_msg("%s: mode %o, want %o", rel, m & 07777, mode);
}

static void expect_dir(const char *dest, const char *rel, mode_t mode)
{
    char p[256];
    snprintf(p, sizeof(p), "%s/%s", dest, rel);
    mode_t m = mode_of(p);
    assert_true(S_ISDIR(m));
    if ((m & 07777) != mode)
        fail_msg("%s: mode %o, want %o", rel, m & 07777, mode);
}

static void expect_link(const char *dest, const char *rel, const char *target)
{
    char p[256], t[256];
    snprintf(p, sizeof(p), "%s/%s", dest, rel);
    ssize_t n = readlink(p, t, sizeof(t) - 1);
    assert_true(n > 0);
    t[n] = '\0';
    assert_string_equal(t, target);
}

static void test_pack_unpack_roundtrip(void **state)
{
    fx_t *f = *state;
    char src[128], out[160], id[ARTIFACT_ID_LEN + 1], id2[ARTIFACT_ID_LEN + 1];
    snprintf(src, sizeof(src), "%s/src", f->base);
    snprintf(out, sizeof(out), "%s/app.tar.gz", f->work);
    make_src(src);
    err_t err = {0};
    if (artifact_pack(src, out, id, &err) != 0)
        fail_msg("pack: %s", err.msg);
    assert_true(artifact_id_valid(id));
    assert_int_equal(artifact_file_id(out, id2, &err), 0);
    assert_string_equal(id, id2);
    assert_int_equal(mode_of(out) & 0777, 0644);
    assert_int_equal(count_entries(f->work), 1); /* no temp file left */

    if (artifact_unpack(out, f->dest, NULL, &err) != 0)
        fail_msg("unpack: %s", err.msg);
    expect_dir(f->dest, ".", 0555);
    expect_file(f->dest, "a.txt", "hello\n", 0444);
    expect_dir(f->dest, "bin", 0550);
    expect_file(f->dest, "bin/run.sh", "#!/bin/sh\necho run\n", 0555);
    expect_file(f->dest, "bin/suid", "s", 0555); /* setuid dropped */
    expect_dir(f->dest, "sub/dir", 0500);
    expect_file(f->dest, "sub/dir/deep.txt", "deep", 0400);
    expect_link(f->dest, "sub/dir/up", "../../a.txt");
    expect_link(f->dest, "link", "a.txt");
    expect_dir(f->dest, "empty", 0555);
    char p[256];
    snprintf(p, sizeof(p), "%s/fifo", f->dest);
    assert_int_equal(access(p, F_OK), -1);       /* not packed */
    assert_int_equal(count_entries(f->dest), 5); /* a.txt bin sub link empty */
    /* Through the symlink, from the unpacked tree. */
    snprintf(p, sizeof(p), "%s/sub/dir/up", f->dest);
    assert_string_equal(read_file(p, NULL), "hello\n");
    assert_int_equal(count_entries(f->work), 2); /* archive + dest, no temp dir */

    /* Owner root in the archive, mtimes kept. */
    struct archive *a = archive_read_new();
    archive_read_support_filter_gzip(a);
    archive_read_support_format_tar(a);
    assert_int_equal(archive_read_open_filename(a, out, 4096), ARCHIVE_OK);
    struct archive_entry *e;
    struct stat st;
    snprintf(p, sizeof(p), "%s/a.txt", src);
    stat(p, &st);
    int n = 0;
    while (archive_read_next_header(a, &e) == ARCHIVE_OK) {
        n++;
        assert_int_equal(archive_entry_uid(e), 0);
        assert_int_equal(archive_entry_gid(e), 0);
        assert_string_equal(archive_entry_uname(e), "root");
        assert_string_equal(archive_entry_gname(e), "root");
        assert_true(archive_entry_pathname(e)[0] != '/');
        if (strcmp(archive_entry_pathname(e), "a.txt") == 0)
            assert_int_equal(archive_entry_mtime(e), st.st_mtim.tv_sec);
    }
    archive_read_free(a);
    assert_int_equal(n, 10); /* a.txt bin bin/run.sh bin/suid empty link sub sub/dir +2 */

    assert_int_equal(artifact_remove(f->dest, &err), 0);
    assert_int_equal(access(f->dest, F_OK), -1);
    assert_int_equal(artifact_remove(f->dest, &err), 0); /* already gone: fine */
}

/* The same tree packs to the same bytes: sorted entries, no gzip time. */
static void test_pack_deterministic(void **state)
{
    fx_t *f = *state;
    char src[128], out1[160], out2[160], id1[ARTIFACT_ID_LEN + 1], id2[ARTIFACT_ID_LEN + 1];
    snprintf(src, sizeof(src), "%s/src", f->base);
    snprintf(out1, sizeof(out1), "%s/one.tar.gz", f->work);
    snprintf(out2, sizeof(out2), "%s/two.tar.gz", f->work);
    make_src(src);
    assert_int_equal(artifact_pack(src, out1, id1, NULL), 0);
    assert_int_equal(artifact_pack(src, out2, id2, NULL), 0);
    assert_string_equal(id1, id2);
    size_t len;
    const unsigned char *gz = (const unsigned char *)read_file(out1, &len);
    assert_true(len > 10);
    assert_int_equal(gz[0], 0x1f);
    assert_int_equal(gz[1], 0x8b);
    assert_int_equal(gz[4] | gz[5] | gz[6] | gz[7], 0); /* gzip MTIME unset */
}

/* `drover pack . -o app.tar.gz` run twice must not pack the archive into
 * itself. */
static void test_pack_out_inside_dir(void **state)
{
    fx_t *f = *state;
    char src[128], out[160], p[256], id[ARTIFACT_ID_LEN + 1];
    snprintf(src, sizeof(src), "%s/src", f->base);
    assert_int_equal(mkdir(src, 0755), 0);
    snprintf(p, sizeof(p), "%s/f", src);
    write_file(p, "x", 0644);
    snprintf(out, sizeof(out), "%s/app.tar.gz", src);
    assert_int_equal(artifact_pack(src, out, id, NULL), 0);
    assert_int_equal(artifact_pack(src, out, id, NULL), 0);
    assert_int_equal(artifact_unpack(out, f->dest, NULL, NULL), 0);
    assert_int_equal(count_entries(f->dest), 1);
    expect_file(f->dest, "f", "x", 0444);
}

static void test_pack_errors(void **state)
{
    fx_t *f = *state;
    char id[ARTIFACT_ID_LEN + 1], out[160];
    snprintf(out, sizeof(out), "%s/o.tar.gz", f->work);
    err_t err = {0};
    assert_int_equal(artifact_pack("/nonexistent/drover", out, id, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/drover"));
    assert_int_equal(artifact_pack(f->archive, out, id, &err), -ENOENT);
    write_file(f->archive, "x", 0644);
    assert_int_equal(artifact_pack(f->archive, out, id, &err), -ENOTDIR);
    assert_int_equal(count_entries(f->work), 1);
    /* A symlink the unpacker would refuse fails the pack, leaving nothing. */
    char src[128], l[160];
    snprintf(src, sizeof(src), "%s/src", f->base);
    assert_int_equal(mkdir(src, 0755), 0);
    snprintf(l, sizeof(l), "%s/venv-python", src);
    assert_int_equal(symlink("/usr/bin/python3", l), 0);
    assert_int_equal(artifact_pack(src, out, id, &err), -EPERM);
    assert_non_null(strstr(err.msg, "symlink to \"/usr/bin/python3\": symlink target is absolute"));
    assert_int_equal(count_entries(f->work), 1);
    unlink(l);
    assert_int_equal(symlink("../../outside", l), 0);
    assert_int_equal(artifact_pack(src, out, id, &err), -EPERM);
    assert_non_null(strstr(err.msg, "points outside"));
}

/* What the tar command makes (./ prefixes, a ./ entry) unpacks, in every
 * compression the agent accepts. */
static void test_unpack_tar_command(void **state)
{
    fx_t *f = *state;
    char src[128], cmd[512];
    snprintf(src, sizeof(src), "%s/src", f->base);
    make_src(src);
    char fifo[160];
    snprintf(fifo, sizeof(fifo), "%s/fifo", src);
    unlink(fifo); /* tar would archive it */
    const char *flags[] = {"z", "J", "j", "", "--zstd -"};
    for (size_t i = 0; i < sizeof(flags) / sizeof(flags[0]); i++) {
        snprintf(cmd, sizeof(cmd), "tar -C %s -c%sf %s . 2>/dev/null", src, flags[i], f->archive);
        if (system(cmd) != 0) {
            if (i == 4)
                continue; /* tar without zstd support */
            fail_msg("%s failed", cmd);
        }
        err_t err = {0};
        if (artifact_unpack(f->archive, f->dest, NULL, &err) != 0)
            fail_msg("tar -%s: %s", flags[i], err.msg);
        expect_file(f->dest, "bin/run.sh", "#!/bin/sh\necho run\n", 0555);
        expect_link(f->dest, "link", "a.txt");
        expect_dir(f->dest, ".", 0555);
        assert_int_equal(artifact_remove(f->dest, NULL), 0);
        unlink(f->archive);
    }
}

static void test_unpack_compressions(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {
        {"d", AE_IFDIR, NULL, 0, 0},
        {"d/f", AE_IFREG, "content", 0640, 0},
        {"h", HARDLINK, "d/f", 0, 0},
        {"d/l", AE_IFLNK, "../h", 0, 0},
    };
    const int filters[] = {-1,
                           ARCHIVE_FILTER_GZIP,
                           ARCHIVE_FILTER_XZ,
                           ARCHIVE_FILTER_BZIP2,
                           ARCHIVE_FILTER_ZSTD,
                           ARCHIVE_FILTER_LZ4};
    const int formats[] = {ARCHIVE_FORMAT_TAR_USTAR,          ARCHIVE_FORMAT_TAR_PAX_INTERCHANGE,
                           ARCHIVE_FORMAT_TAR_GNUTAR,         ARCHIVE_FORMAT_TAR_USTAR,
                           ARCHIVE_FORMAT_TAR_PAX_RESTRICTED, ARCHIVE_FORMAT_TAR_USTAR};
    for (size_t i = 0; i < sizeof(filters) / sizeof(filters[0]); i++) {
        build(f->archive, ents, 4, filters[i], formats[i]);
        err_t err = {0};
        if (artifact_unpack(f->archive, f->dest, NULL, &err) != 0)
            fail_msg("filter %d: %s", filters[i], err.msg);
        expect_file(f->dest, "d/f", "content", 0440);
        expect_file(f->dest, "h", "content", 0440);
        expect_link(f->dest, "d/l", "../h");
        char a[256], b[256];
        struct stat sa, sb;
        snprintf(a, sizeof(a), "%s/d/f", f->dest);
        snprintf(b, sizeof(b), "%s/h", f->dest);
        stat(a, &sa);
        stat(b, &sb);
        assert_int_equal(sa.st_ino, sb.st_ino);
        assert_int_equal(artifact_remove(f->dest, NULL), 0);
    }
}

/* Special bits dropped; directories keep what the owner needs to enter
 * them (so a 0000 directory's contents still unpack). */
static void test_unpack_modes(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {
        {"suid", AE_IFREG, "x", 06755, 0},      {"sticky", AE_IFDIR, NULL, 01777, 0},
        {"closed", AE_IFDIR, NULL, MODE_0, 0},  {"closed/f", AE_IFREG, "y", 0644, 0},
        {"closed/g", AE_IFREG, "z", MODE_0, 0}, {"./x/./y//", AE_IFDIR, NULL, 0711, 0},
        {"./", AE_IFDIR, NULL, 0777, 0},
    };
    build_tar(f->archive, ents, 7);
    err_t err = {0};
    if (artifact_unpack(f->archive, f->dest, NULL, &err) != 0)
        fail_msg("%s", err.msg);
    expect_file(f->dest, "suid", "x", 0555);
    expect_dir(f->dest, "sticky", 0555);
    expect_dir(f->dest, "closed", 0500);
    expect_file(f->dest, "closed/f", "y", 0444);
    expect_dir(f->dest, "x/y", 0511);
    expect_dir(f->dest, ".", 0555);
    char p[256];
    snprintf(p, sizeof(p), "%s/closed/g", f->dest);
    assert_int_equal(mode_of(p) & 07777, 0);
}

static void test_unpack_dest(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {{"f", AE_IFREG, "x", 0, 0}};
    build_tar(f->archive, ents, 1);
    err_t err = {0};
    assert_int_equal(mkdir(f->dest, 0755), 0);
    assert_int_equal(artifact_unpack(f->archive, f->dest, NULL, &err), -EEXIST);
    assert_non_null(strstr(err.msg, "already exists"));
    rmdir(f->dest);
    char bad[256];
    snprintf(bad, sizeof(bad), "%s/missing/dest", f->work);
    assert_int_equal(artifact_unpack(f->archive, bad, NULL, &err), -ENOENT);
    assert_int_equal(artifact_unpack("/nonexistent.tar", f->dest, NULL, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent.tar"));
    /* A trailing slash and a relative dest work. */
    char slash[256];
    snprintf(slash, sizeof(slash), "%s/", f->dest);
    assert_int_equal(artifact_unpack(f->archive, slash, NULL, &err), 0);
    expect_file(f->dest, "f", "x", 0444);
    assert_int_equal(artifact_remove(f->dest, NULL), 0);
    char cwd[PATH_MAX];
    assert_non_null(getcwd(cwd, sizeof(cwd)));
    assert_int_equal(chdir(f->work), 0);
    int rc = artifact_unpack("in.tar", "rel", NULL, &err);
    assert_int_equal(chdir(cwd), 0);
    assert_int_equal(rc, 0);
    char rel[256];
    snprintf(rel, sizeof(rel), "%s/rel", f->work);
    expect_file(rel, "f", "x", 0444);
}

/* ---- hostile archives --------------------------------------------------- */

typedef struct hostile {
    const char *what;
    ent_t ents[5];
    int n;
    const char *want; /* substring of the error */
    uint64_t max_bytes;
    uint64_t max_entries;
} hostile_t;

/* Unpack must fail with `want` in the message, leave no dest and no temp
 * directory, and write nothing beside them. */
static void expect_refused(fx_t *f, const char *what, const char *want,
                           const artifact_limits_t *lim)
{
    err_t err = {0};
    int rc = artifact_unpack(f->archive, f->dest, lim, &err);
    if (rc >= 0)
        fail_msg("%s: unpacked", what);
    if (!strstr(err.msg, want))
        fail_msg("%s: error \"%s\" lacks \"%s\"", what, err.msg, want);
    assert_int_equal(access(f->dest, F_OK), -1);
    if (count_entries(f->work) != 1)
        fail_msg("%s: something was left beside the archive", what);
    if (count_entries(f->base) != 1)
        fail_msg("%s: something was written outside the work directory", what);
}

static void test_unpack_hostile(void **state)
{
    fx_t *f = *state;
    char abs_path[160], long_name[4100];
    snprintf(abs_path, sizeof(abs_path), "%s/abs-escape", f->base);
    memset(long_name, 'n', sizeof(long_name) - 1);
    for (size_t i = 200; i < sizeof(long_name) - 1; i += 200)
        long_name[i] = '/';
    long_name[sizeof(long_name) - 1] = '\0';
    /* what, entries, count, error substring, byte limit, entry limit */
#define H(what_, n_, want_, ...)                                                                   \
    {                                                                                              \
        .what = what_, .n = n_, .want = want_, .ents = { __VA_ARGS__ }                             \
    }
#define HL(what_, n_, want_, bytes_, entries_, ...)                                                \
    {                                                                                              \
        .what = what_, .n = n_, .want = want_, .max_bytes = bytes_, .max_entries = entries_,       \
        .ents = {                                                                                  \
            __VA_ARGS__                                                                            \
        }                                                                                          \
    }
    const hostile_t cases[] = {
        H("dotdot", 1, "archive entry \"../x\": path escapes the artifact directory",
          {"../x", AE_IFREG, "x", 0, 0}),
        H("deep dotdot", 1, "archive entry \"../../x\": path escapes the artifact directory",
          {"../../x", AE_IFREG, "x", 0, 0}),
        H("absolute", 1, "\": absolute path", {abs_path, AE_IFREG, "x", 0, 0}),
        H("a/../../x", 2, "archive entry \"a/../../x\": path escapes the artifact directory",
          {"a/", AE_IFDIR, NULL, 0, 0}, {"a/../../x", AE_IFREG, "x", 0, 0}),
        H("a/../b", 1, "archive entry \"a/../b\": path has a .. component",
          {"a/../b", AE_IFREG, "x", 0, 0}),
        H("symlink to /etc", 1, "archive entry \"etc\": symlink target is absolute",
          {"etc", AE_IFLNK, "/etc", 0, 0}),
        H("symlink ../..", 1,
          "archive entry \"l\": symlink target points outside the artifact directory",
          {"l", AE_IFLNK, "../..", 0, 0}),
        H("nested symlink", 2, "archive entry \"d/l\": symlink target points outside",
          {"d/", AE_IFDIR, NULL, 0, 0}, {"d/l", AE_IFLNK, "../../x", 0, 0}),
        H("symlink .. after a name", 2, "archive entry \"m\": symlink target has .. after a name",
          {"l", AE_IFLNK, ".", 0, 0}, {"m", AE_IFLNK, "l/../x", 0, 0}),
        H("write through symlink", 3, "archive entry \"l/x\": ", {"d/", AE_IFDIR, NULL, 0, 0},
          {"l", AE_IFLNK, "d", 0, 0}, {"l/x", AE_IFREG, "x", 0, 0}),
        H("hardlink /etc/passwd", 1, "archive entry \"h\": hard link target: absolute path",
          {"h", HARDLINK, "/etc/passwd", 0, 0}),
        H("hardlink ../", 1, "archive entry \"h\": hard link target: path escapes",
          {"h", HARDLINK, "../../../../etc/passwd", 0, 0}),
        H("hardlink to symlink", 3, "archive entry \"h\": hard link target is not a regular file",
          {"d/", AE_IFDIR, NULL, 0, 0}, {"d/s", AE_IFLNK, "../f", 0, 0},
          {"h", HARDLINK, "d/s", 0, 0}),
        H("hardlink to missing", 1, "archive entry \"h\": hard link target is not a regular file",
          {"h", HARDLINK, "nope", 0, 0}),
        H("fifo", 1, "archive entry \"f\": fifo not allowed", {"f", AE_IFIFO, NULL, 0, 0}),
        H("char device", 1, "archive entry \"null\": character device not allowed",
          {"null", AE_IFCHR, NULL, 0, 0}),
        H("block device", 1, "archive entry \"sda\": block device not allowed",
          {"sda", AE_IFBLK, NULL, 0, 0}),
        HL("file over the limit", 1,
           "archive entry \"big\": unpacked size exceeds the limit of 1000 bytes", 1000, 0,
           {"big", AE_IFREG, NULL, 0, 2000}),
        HL("sum over the limit", 2,
           "archive entry \"b\": unpacked size exceeds the limit of 1000 bytes", 1000, 0,
           {"a", AE_IFREG, NULL, 0, 600}, {"b", AE_IFREG, NULL, 0, 600}),
        HL("too many entries", 4, "archive entry \"d\": more than 3 entries", 0, 3,
           {"a", AE_IFREG, "1", 0, 0}, {"b", AE_IFREG, "1", 0, 0}, {"c", AE_IFREG, "1", 0, 0},
           {"d", AE_IFREG, "1", 0, 0}),
        H("root as a file", 1, "archive entry \".\": names the artifact directory itself",
          {".", AE_IFREG, "x", 0, 0}),
        H("empty name", 1, "archive entry \"\": empty path", {"", AE_IFREG, "x", 0, 0}),
        H("path too long", 1, "path too long", {long_name, AE_IFREG, "x", 0, 0}),
        H("control characters", 1,
          "archive entry \"a\\x0a\\x1b[31m/../b\": path has a .. component",
          {"a\n\033[31m/../b", AE_IFREG, "x", 0, 0}),
    };
#undef H
#undef HL
    struct stat passwd_before, passwd_after;
    assert_int_equal(stat("/etc/passwd", &passwd_before), 0);
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const hostile_t *c = &cases[i];
        build_tar(f->archive, c->ents, c->n);
        artifact_limits_t lim = {c->max_bytes, c->max_entries};
        expect_refused(f, c->what, c->want, &lim);
        unlink(f->archive);
    }
    assert_int_equal(stat("/etc/passwd", &passwd_after), 0);
    assert_int_equal(passwd_before.st_nlink, passwd_after.st_nlink);
    assert_int_equal(access(abs_path, F_OK), -1);
}

/* Limits hold while writing too, not only as declared: a size limit right
 * at the declared total passes, one byte less fails. */
static void test_unpack_limit_exact(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {{"a", AE_IFREG, NULL, 0, 600}, {"b", AE_IFREG, NULL, 0, 400}};
    build_tar(f->archive, ents, 2);
    artifact_limits_t lim = {1000, 2};
    assert_int_equal(artifact_unpack(f->archive, f->dest, &lim, NULL), 0);
    assert_int_equal(artifact_remove(f->dest, NULL), 0);
    lim.max_total_bytes = 999;
    expect_refused(f, "999", "archive entry \"b\": unpacked size exceeds", &lim);
}

static void test_unpack_not_archives(void **state)
{
    fx_t *f = *state;
    /* garbage */
    char junk[2048];
    for (size_t i = 0; i < sizeof(junk) - 1; i++)
        junk[i] = (char)('a' + (i * 7) % 26);
    junk[sizeof(junk) - 1] = '\0';
    write_file(f->archive, junk, 0644);
    expect_refused(f, "garbage", "not a tar archive: ", NULL);
    /* empty */
    write_file(f->archive, "", 0644);
    expect_refused(f, "empty", "not a tar archive: ", NULL);
    expect_refused(f, "empty", "is empty", NULL);
    /* gzip'd garbage */
    char cmd[512];
    snprintf(cmd, sizeof(cmd), "printf 'not a tar at all' | gzip > %s", f->archive);
    assert_int_equal(system(cmd), 0);
    expect_refused(f, "gzip'd garbage", "not a tar archive: ", NULL);
    /* a zip is refused even though libarchive could read it */
    const ent_t ents[] = {{"f", AE_IFREG, "x", 0, 0}};
    build(f->archive, ents, 1, -1, ARCHIVE_FORMAT_ZIP);
    expect_refused(f, "zip", "not a tar archive: ", NULL);
    /* cpio too */
    build(f->archive, ents, 1, -1, ARCHIVE_FORMAT_CPIO_POSIX);
    expect_refused(f, "cpio", "not a tar archive: ", NULL);
    /* a directory */
    unlink(f->archive);
    assert_int_equal(mkdir(f->archive, 0755), 0);
    expect_refused(f, "directory", "not a regular file", NULL);
    rmdir(f->archive);
}

/* A valid archive cut short fails cleanly, naming where it broke. */
static void test_unpack_truncated(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {
        {"a", AE_IFREG, NULL, 0, 3000},
        {"b", AE_IFREG, NULL, 0, 3000},
    };
    build(f->archive, ents, 2, -1, ARCHIVE_FORMAT_TAR_USTAR);
    assert_int_equal(truncate(f->archive, 5000), 0); /* in b's data */
    expect_refused(f, "truncated data", "archive entry \"b\": ", NULL);
    assert_int_equal(truncate(f->archive, 4000), 0); /* in b's header */
    expect_refused(f, "truncated header", "in.tar, after entry \"a\": ", NULL);
}

/* ---- removal and ids ---------------------------------------------------- */

static void test_remove_closed_dirs(void **state)
{
    fx_t *f = *state;
    char d[160], p[200], l[200];
    snprintf(d, sizeof(d), "%s/tree", f->work);
    assert_int_equal(mkdir(d, 0755), 0);
    snprintf(p, sizeof(p), "%s/inner", d);
    assert_int_equal(mkdir(p, 0755), 0);
    snprintf(l, sizeof(l), "%s/inner/f", d);
    write_file(l, "x", 0444);
    snprintf(l, sizeof(l), "%s/inner/out", d);
    assert_int_equal(symlink(f->archive, l), 0); /* must not be followed */
    write_file(f->archive, "keep", 0644);
    assert_int_equal(chmod(p, 0), 0);
    assert_int_equal(chmod(d, 0555), 0);
    err_t err = {0};
    if (artifact_remove(d, &err) != 0)
        fail_msg("%s", err.msg);
    assert_int_equal(access(d, F_OK), -1);
    assert_string_equal(read_file(f->archive, NULL), "keep");
}

/* Root ignores permission bits, so what unpacked trees mean for an agent
 * running as a plain user is checked as one (uid 65534) in a child: the
 * tree (with a 0000 directory from the archive) unpacks, is really
 * read-only, and artifact_remove still deletes it. */
static int nonroot_child(const char *archive, const char *dest)
{
    err_t err = {0};
    if (artifact_unpack(archive, dest, NULL, &err) != 0) {
        fprintf(stderr, "unpack as uid %d: %s\n", (int)getuid(), err.msg);
        return 1;
    }
    char p[256];
    snprintf(p, sizeof(p), "%s/f", dest);
    if (open(p, O_WRONLY | O_CLOEXEC) >= 0 || errno != EACCES)
        return 2; /* writable */
    snprintf(p, sizeof(p), "%s/new", dest);
    if (open(p, O_WRONLY | O_CREAT | O_CLOEXEC, 0644) >= 0 || errno != EACCES)
        return 3; /* directory writable */
    if (artifact_remove(dest, &err) != 0) {
        fprintf(stderr, "remove as uid %d: %s\n", (int)getuid(), err.msg);
        return 4;
    }
    return access(dest, F_OK) == 0 ? 5 : 0;
}

static void test_unpack_remove_as_user(void **state)
{
    fx_t *f = *state;
    const ent_t ents[] = {
        {"f", AE_IFREG, "x", 0644, 0},
        {"closed", AE_IFDIR, NULL, MODE_0, 0},
        {"closed/g", AE_IFREG, "y", 0644, 0},
        {"closed/sub", AE_IFDIR, NULL, 0555, 0},
        {"closed/sub/h", AE_IFREG, "z", 0400, 0},
    };
    build_tar(f->archive, ents, 5);
    uid_t uid = getuid() == 0 ? 65534 : getuid();
    char home[160], dest[200];
    snprintf(home, sizeof(home), "%s/user", f->base);
    assert_int_equal(mkdir(home, 0755), 0);
    snprintf(dest, sizeof(dest), "%s/dest", home);
    if (getuid() != 0) {
        assert_int_equal(nonroot_child(f->archive, dest), 0);
        return;
    }
    assert_int_equal(chown(home, uid, uid), 0);
    assert_int_equal(chmod(f->base, 0711), 0);
    assert_int_equal(chmod(f->work, 0711), 0);
    pid_t pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        if (setgroups(0, NULL) != 0 || setgid(uid) != 0 || setuid(uid) != 0)
            _exit(100);
        _exit(nonroot_child(f->archive, dest));
    }
    int ws;
    assert_int_equal(waitpid(pid, &ws, 0), pid);
    assert_true(WIFEXITED(ws));
    assert_int_equal(WEXITSTATUS(ws), 0);
}

static void test_file_id(void **state)
{
    fx_t *f = *state;
    write_file(f->archive, "abc", 0644);
    char id[ARTIFACT_ID_LEN + 1], id2[ARTIFACT_ID_LEN + 1];
    assert_int_equal(artifact_file_id(f->archive, id, NULL), 0);
    assert_string_equal(id,
                        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(artifact_file_id(f->archive, id2, NULL), 0);
    assert_string_equal(id, id2);
    write_file(f->archive, "", 0644);
    assert_int_equal(artifact_file_id(f->archive, id, NULL), 0);
    assert_string_equal(id,
                        "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    err_t err = {0};
    assert_int_equal(artifact_file_id("/nonexistent/x", id, &err), -ENOENT);
    assert_non_null(strstr(err.msg, "/nonexistent/x"));
}

static void test_id_valid(void **state)
{
    assert_true(artifact_id_valid(
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    assert_false(artifact_id_valid(
        "sha256:BA7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    assert_false(artifact_id_valid(
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015a"));
    assert_false(artifact_id_valid(
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad0"));
    assert_false(artifact_id_valid(
        "sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"));
    assert_false(artifact_id_valid(
        "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ag"));
    assert_false(artifact_id_valid(""));
    assert_false(artifact_id_valid(NULL));
}

int main(void)
{
    log_setup(LOG_OFF, LOG_TEXT);
    umask(022);
#define T(fn) cmocka_unit_test_setup_teardown(fn, fx_setup, fx_teardown)
    const struct CMUnitTest tests[] = {
        T(test_pack_unpack_roundtrip),
        T(test_pack_deterministic),
        T(test_pack_out_inside_dir),
        T(test_pack_errors),
        T(test_unpack_tar_command),
        T(test_unpack_compressions),
        T(test_unpack_modes),
        T(test_unpack_dest),
        T(test_unpack_hostile),
        T(test_unpack_limit_exact),
        T(test_unpack_not_archives),
        T(test_unpack_truncated),
        T(test_remove_closed_dirs),
        T(test_unpack_remove_as_user),
        T(test_file_id),
        cmocka_unit_test(test_id_valid),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
