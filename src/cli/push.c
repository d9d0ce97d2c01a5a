/* `drover push DIR`: pack a directory as an artifact (a .tar.gz named by
 * its sha256, src/agent/artifact.h) and upload it (POST /v1/artifacts),
 * so a spec can run it with "artifact": "sha256:...". */
#include "cli/cli.h"

#include "agent/artifact.h"
#include "core/alloc.h"
#include "core/json.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The API refuses larger artifacts (API_ARTIFACT_MAX in src/api/api.h). */
#define PUSH_MAX_BYTES (256ull * 1024 * 1024)
/* Hundreds of MiB over a slow link take a while; a stuck upload still
 * ends. */
#define PUSH_TIMEOUT_MS (30L * 60 * 1000)

/* ---- rendering ---------------------------------------------------------- */

void cli_push_print(const char *dir, const json_t *answer, FILE *out)
{
    const char *id = json_str(answer, "id");
    char *size = cli_json_text(json_object_get(answer, "size"));
    fprintf(out, "pushed %s as %s (%s bytes)\n", dir, id ? id : "-", size);
    fprintf(out, "use it in a spec: \"artifact\": \"%s\"\n", id ? id : "-");
    free(size);
}

/* ---- verb --------------------------------------------------------------- */

/* A private directory for the archive: artifact_pack writes a temporary
 * file beside its output and renames it, so the output's directory must be
 * ours alone. */
static char *push_tmpdir(err_t *err)
{
    const char *base = getenv("TMPDIR");
    char *tmpl = xasprintf("%s/drover-push-XXXXXX", base && *base ? base : "/tmp");
    if (!mkdtemp(tmpl)) {
        err_set(err, -errno, "cannot create a temporary directory %s: %s", tmpl, strerror(errno));
        free(tmpl);
        return NULL;
    }
    return tmpl;
}

int cli_cmd_push(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "push", "push DIR [--json]",
        "Pack DIR (files, directories and symlinks; owners dropped, modes and times kept) into "
        "a .tar.gz of at most 256 MiB and upload it. The artifact's id is the sha256 of the "
        "archive: pushing the same tree again gives the same id. Put the id in an app spec's "
        "\"artifact\" to run the app from these files.",
        "drover push ./site\ndrover push ./site --json | jq -r .id"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer ({\"id\": ..., \"size\": N})")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *dir = args.pos[0];
    char *tmpdir = NULL, *archive = NULL;
    json_t *j = NULL;
    err_t err = {0};
    struct stat st;
    if (stat(dir, &st) != 0) {
        rc = cli_fail(ctx, "cannot read %s: %s", dir, strerror(errno));
        goto out;
    }
    if (!S_ISDIR(st.st_mode)) {
        rc = cli_fail(ctx, "%s is not a directory (push packs a directory)", dir);
        goto out;
    }
    if (!(tmpdir = push_tmpdir(&err))) {
        rc = cli_fail(ctx, "%s", err.msg);
        goto out;
    }
    archive = xasprintf("%s/artifact.tar.gz", tmpdir);
    char id[ARTIFACT_ID_LEN + 1] = "";
    if (artifact_pack(dir, archive, id, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
        goto out;
    }
    if (stat(archive, &st) != 0) {
        rc = cli_fail(ctx, "cannot read the archive %s: %s", archive, strerror(errno));
        goto out;
    }
    if ((unsigned long long)st.st_size > PUSH_MAX_BYTES) {
        rc = cli_fail(ctx, "%s packs to %lld bytes; an artifact is at most %llu bytes (256 MiB)",
                      dir, (long long)st.st_size, PUSH_MAX_BYTES);
        goto out;
    }
    http_client_resp_t resp;
    if (cli_api_upload(ctx, "POST", "/v1/artifacts", "application/gzip", archive, PUSH_TIMEOUT_MS,
                       &resp, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        err_t perr = {0};
        j = json_parse(resp.body.data ? resp.body.data : "", resp.body.len, &perr);
        const char *got = json_str(j, "id");
        if (!got) {
            rc = cli_fail(ctx, "POST /v1/artifacts: answer has no artifact id");
        } else if (strcmp(got, id) != 0) {
            /* The server hashes what it received: a different id means
             * the bytes changed on the way. */
            rc = cli_fail(ctx, "the server stored %s but the archive is %s (upload corrupted?)",
                          got, id);
        } else {
            if (opts[0].count)
                cli_print_raw(ctx, &resp);
            else
                cli_push_print(dir, j, ctx->out);
            rc = CLI_EXIT_OK;
        }
    }
    http_client_resp_free(&resp);
out:
    if (archive)
        unlink(archive);
    if (tmpdir)
        rmdir(tmpdir);
    free(archive);
    free(tmpdir);
    json_decref(j);
    cli_args_free(&args, opts, 1);
    return rc;
}
