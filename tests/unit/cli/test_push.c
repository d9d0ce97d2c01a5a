/* `drover push DIR`: the archive goes up as the request body, byte for
 * byte; the answer's id must be the archive's; the temporary files go away;
 * the output lines docs/cli.md promises. artifact_pack is replaced by a
 * stand-in that writes a known archive (the real one is tested with the
 * agent module). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "agent/artifact.h"
#include "cli/cli.h"
#include "core/alloc.h"
#include "spec/spec.h"

#include "cli/fake_api.h"

#include <dirent.h>
#include <errno.h>
#include <openssl/evp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define CLI_STUBS_OWN_ARTIFACT_PACK
#include "cli/link_stubs.h"

/* What the stand-in packs: gzip magic then `pack_size - 2` pattern bytes. */
static size_t pack_size = 1000;
static int pack_fail;
static char pack_dir_seen[256];

static unsigned char *pack_bytes(size_t n)
{
    unsigned char *b = xmalloc(n);
    for (size_t i = 0; i < n; i++)
        b[i] = (unsigned char)(i * 131 + i / 251);
    b[0] = 0x1f;
    b[1] = 0x8b;
    return b;
}

static void sha256_id(const unsigned char *b, size_t n, char *id)
{
    unsigned char md[32];
    unsigned int len = 0;
    EVP_Digest(b, n, md, &len, EVP_sha256(), NULL);
    strcpy(id, "sha256:");
    for (unsigned i = 0; i < len; i++)
        snprintf(id + 7 + 2 * i, 3, "%02x", md[i]);
}

int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err)
{
    snprintf(pack_dir_seen, sizeof(pack_dir_seen), "%s", dir);
    if (pack_fail)
        return err_set(err, -EACCES, "pack %s: cannot read %s/secret: Permission denied", dir, dir);
    unsigned char *b = pack_bytes(pack_size);
    FILE *f = fopen(out, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(b, 1, pack_size, f), pack_size);
    fclose(f);
    sha256_id(b, pack_size, id_out);
    free(b);
    return 0;
}

static char tmp_root[64];

static int setup(void **state)
{
    (void)state;
    fake_start();
    snprintf(tmp_root, sizeof(tmp_root), "/tmp/drover-test-push-XXXXXX");
    assert_non_null(mkdtemp(tmp_root));
    setenv("TMPDIR", tmp_root, 1);
    pack_fail = 0;
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    fake_stop();
    unsetenv("TMPDIR");
    assert_int_equal(rmdir(tmp_root), 0); /* fails if push left anything */
    return 0;
}

static size_t dir_entries(const char *path)
{
    DIR *d = opendir(path);
    assert_non_null(d);
    size_t n = 0;
    for (struct dirent *e; (e = readdir(d));)
        n += strcmp(e->d_name, ".") && strcmp(e->d_name, "..");
    closedir(d);
    return n;
}

static void test_push_print(void **state)
{
    (void)state;
    json_t *j = json_pack("{s:s, s:i}", "id", "sha256:ab", "size", 1234);
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_push_print("./site", j, f);
    fclose(f);
    assert_string_equal(b, "pushed ./site as sha256:ab (1234 bytes)\n"
                           "use it in a spec: \"artifact\": \"sha256:ab\"\n");
    free(b);
    json_decref(j);
}

/* Several MiB, so the body is read in many pieces while it is sent. */
static void test_push_uploads_archive(void **state)
{
    (void)state;
    pack_size = 3u * 1024 * 1024 + 17;
    unsigned char *want = pack_bytes(pack_size);
    char id[ARTIFACT_ID_LEN + 1];
    sha256_id(want, pack_size, id);
    char *answer = xasprintf("{\"id\": \"%s\", \"size\": %zu}", id, pack_size);
    const fake_route_t routes[] = {{"POST", "/v1/artifacts", 201, NULL, NULL, answer, false}};
    fake_set(routes, 1);
    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "push", tmp_root, NULL), 0);
    char *expect =
        xasprintf("pushed %s as %s (%zu bytes)\nuse it in a spec: \"artifact\": \"%s\"\n", tmp_root,
                  id, pack_size, id);
    assert_string_equal(out, expect);
    assert_string_equal(err, "");
    assert_string_equal(pack_dir_seen, tmp_root);
    char *log = fake_log();
    assert_string_equal(log, "POST /v1/artifacts\n");
    free(log);
    pthread_mutex_lock(&fake.mu);
    assert_int_equal(fake.body_len, pack_size);
    assert_memory_equal(fake.body, want, pack_size);
    pthread_mutex_unlock(&fake.mu);
    /* Only the temporary directory's parent is left: nothing inside. */
    assert_int_equal(dir_entries(tmp_root), 0);
    free(out);
    free(err);

    assert_int_equal(fake_run(&out, &err, "push", tmp_root, "--json", NULL), 0);
    char *raw = xasprintf("%s\n", answer);
    assert_string_equal(out, raw);
    free(raw);
    free(out);
    free(err);
    free(expect);
    free(answer);
    free(want);
    pack_size = 1000;
}

static void test_push_errors(void **state)
{
    (void)state;
    char file[128];
    snprintf(file, sizeof(file), "%s/plain", tmp_root);
    FILE *f = fopen(file, "w");
    fputs("x", f);
    fclose(f);
    const fake_route_t wrong_id[] = {
        {"POST", "/v1/artifacts", 201, NULL, NULL,
         "{\"id\": \"sha256:0000000000000000000000000000000000000000000000000000000000000000\","
         " \"size\": 1000}",
         false}};
    const fake_route_t refused[] = {
        {"POST", "/v1/artifacts", 400, NULL, NULL,
         "{\"error\": \"the body is not gzip data: an artifact is a .tar.gz archive\"}", false}};
    struct {
        const fake_route_t *routes;
        const char *dir;
        int fail_pack;
        int rc;
        const char *err;
    } cases[] = {
        {wrong_id, tmp_root, 0, 1,
         "drover: the server stored sha256:0000000000000000000000000000000000000000000000000000000"
         "000000000 but the archive is sha256:"},
        {refused, tmp_root, 0, 1,
         "drover: the body is not gzip data: an artifact is a .tar.gz archive\n"},
        {refused, "/nonexistent/site", 0, 1,
         "drover: cannot read /nonexistent/site: No such file or directory\n"},
        {refused, file, 0, 1, "is not a directory (push packs a directory)\n"},
        {refused, tmp_root, 1, 1, "/secret: Permission denied\n"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        fake_set(cases[i].routes, 1);
        pack_fail = cases[i].fail_pack;
        char *out, *err;
        int rc = fake_run(&out, &err, "push", cases[i].dir, NULL);
        if (rc != cases[i].rc || *out || !strstr(err, cases[i].err))
            fail_msg("case %zu: rc %d stdout [%s] stderr [%s]", i, rc, out, err);
        free(out);
        free(err);
        /* Whatever failed, the temporary archive is gone. */
        assert_int_equal(dir_entries(tmp_root), 1);
    }
    pack_fail = 0;
    unlink(file);

    char *out, *err;
    assert_int_equal(fake_run(&out, &err, "push", NULL), 2);
    assert_non_null(strstr(err, "missing argument\nusage: drover push DIR"));
    free(out);
    free(err);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_push_print),
        cmocka_unit_test_setup_teardown(test_push_uploads_archive, setup, teardown),
        cmocka_unit_test_setup_teardown(test_push_errors, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
