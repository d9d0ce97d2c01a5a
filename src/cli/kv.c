/* `drover kv get|put|del|ls`: the KV store, values as raw bytes. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#define KV_VALUE_COLS 40

/* ---- rendering ---------------------------------------------------------- */

void cli_kv_table(const json_t *list, FILE *out)
{
    static const char *const hdr[] = {"key", "value", "mod_rev"};
    cli_table_t t;
    cli_table_init(&t, 3, hdr);
    for (size_t i = 0; i < json_array_size(list); i++) {
        json_t *e = json_array_get(list, i);
        json_t *v = json_object_get(e, "value");
        const char *b64 = json_str(e, "value_base64");
        char *shown;
        if (json_is_string(v))
            shown = cli_value_display(json_string_value(v), json_string_length(v), KV_VALUE_COLS);
        else if (b64)
            shown = xasprintf("<binary %zu bytes>", cli_base64_decoded_len(b64));
        else
            shown = xstrdup("-");
        char *rev = cli_json_text(json_object_get(e, "mod_revision"));
        const char *row[] = {json_str(e, "key"), shown, rev};
        cli_table_add(&t, row);
        free(shown);
        free(rev);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
}

/* ---- helpers ------------------------------------------------------------ */

/* "/v1/kv/<key>" with each segment escaped; the query is added by the
 * caller with kv_param. */
static void kv_path(buf_t *b, const char *key)
{
    buf_append_str(b, "/v1/kv/");
    cli_url_escape(b, key, true);
}

static void kv_param(buf_t *b, const char *name, const char *value)
{
    buf_append_str(b, strchr(b->data, '?') ? "&" : "?");
    buf_append_str(b, name);
    if (value) {
        buf_append_str(b, "=");
        cli_url_escape(b, value, false);
    }
}

static int kv_check_rev(cli_ctx_t *ctx, const cli_cmd_t *cmd, const char *flag, const char *v)
{
    int64_t n;
    if (v && str_to_i64(v, 0, INT64_MAX, &n) < 0)
        return cli_usage_error(ctx, cmd, "--%s %s: expected a revision (integer >= 0)", flag, v);
    return CLI_CONTINUE;
}

/* An X-Drover-* revision header as a JSON integer (NULL when absent or not
 * a number). */
static json_t *kv_header_int(const http_client_resp_t *resp, const char *name)
{
    char *h = http_client_resp_header(resp, name);
    int64_t n;
    json_t *j = h && str_to_i64(h, INT64_MIN, INT64_MAX, &n) == 0 ? json_integer(n) : NULL;
    free(h);
    return j;
}

/* `kv get --json`: the value and its revisions as one object, the same
 * shape as an element of `kv ls --json`, so scripts handle both alike. */
static void kv_print_json(cli_ctx_t *ctx, const char *key, const http_client_resp_t *resp)
{
    json_t *o = json_object();
    json_object_set_new(o, "key", json_string(key));
    const char *data = resp->body.data ? resp->body.data : "";
    json_t *v = json_stringn(data, resp->body.len);
    if (v) {
        json_object_set_new(o, "value", v);
    } else {
        /* Not UTF-8: base64, as the API does for ?recurse. */
        size_t cap = 4 * ((resp->body.len + 2) / 3) + 1;
        unsigned char *b64 = xmalloc(cap);
        EVP_EncodeBlock(b64, (const unsigned char *)data, (int)resp->body.len);
        json_object_set_new(o, "value_base64", json_string((char *)b64));
        free(b64);
    }
    static const char *const hdrs[][2] = {
        {"X-Drover-Create-Revision", "create_revision"},
        {"X-Drover-Mod-Revision", "mod_revision"},
        {"X-Drover-Version", "version"},
        {"X-Drover-Index", "index"},
    };
    for (size_t i = 0; i < sizeof(hdrs) / sizeof(hdrs[0]); i++) {
        json_t *n = kv_header_int(resp, hdrs[i][0]);
        if (n)
            json_object_set_new(o, hdrs[i][1], n);
    }
    char *s = json_dumps(o, JSON_COMPACT);
    fprintf(ctx->out, "%s\n", s ? s : "{}");
    free(s);
    json_decref(o);
}

/* ---- verbs -------------------------------------------------------------- */

static int kv_get(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "kv get", "kv get KEY [--json] [--index N] [--wait DUR]",
        "Print a value as stored (raw bytes, no newline added unless stdout is a terminal). "
        "With --index, wait until the key changes after revision N (or --wait passes).",
        "drover kv get config/web/PORT\n"
        "drover kv get config/web/PORT --json\n"
        "drover kv get config/web/PORT --index 42 --wait 30s"};
    enum { O_JSON, O_INDEX, O_WAIT, O_N };
    cli_opt_t opts[O_N] = {
        [O_JSON] = CLI_FLAG("json", "print value and revisions as one JSON object"),
        [O_INDEX] = CLI_VALUE("index", "N", "block until something changes after revision N"),
        [O_WAIT] = CLI_VALUE("wait", "DUR", "longest block with --index (30s, 5m; default 5m)"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *key = args.pos[0];
    long timeout = CLI_TIMEOUT_MS;
    int64_t wait_ms = 5 * 60 * 1000;
    buf_t path = BUF_INIT(0);
    if ((rc = kv_check_rev(ctx, &cmd, "index", opts[O_INDEX].value)) != CLI_CONTINUE)
        goto out;
    if (opts[O_WAIT].value && str_to_duration_ms(opts[O_WAIT].value, &wait_ms) < 0) {
        rc = cli_usage_error(ctx, &cmd, "--wait %s: expected a duration (30s, 5m)",
                             opts[O_WAIT].value);
        goto out;
    }
    if (opts[O_WAIT].value && !opts[O_INDEX].value) {
        rc = cli_usage_error(ctx, &cmd, "--wait needs --index");
        goto out;
    }
    kv_path(&path, key);
    if (opts[O_INDEX].value) {
        kv_param(&path, "index", opts[O_INDEX].value);
        if (opts[O_WAIT].value)
            kv_param(&path, "wait", opts[O_WAIT].value);
        /* The server answers by itself when the wait ends; leave it room. */
        timeout = (long)(wait_ms > 10 * 60 * 1000 ? 10 * 60 * 1000 : wait_ms) + 30000;
    }
    http_client_resp_t resp;
    err_t err = {0};
    if (cli_api(ctx, "GET", path.data, NULL, NULL, 0, timeout, &resp, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else if (opts[O_JSON].count) {
        kv_print_json(ctx, key, &resp);
        rc = CLI_EXIT_OK;
    } else {
        if (resp.body.len)
            fwrite(resp.body.data, 1, resp.body.len, ctx->out);
        if (ctx->tty && resp.body.len && resp.body.data[resp.body.len - 1] != '\n')
            fputc('\n', ctx->out);
        rc = CLI_EXIT_OK;
    }
    http_client_resp_free(&resp);
out:
    buf_free(&path);
    cli_args_free(&args, opts, O_N);
    return rc;
}

static int kv_put(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "kv put", "kv put KEY VALUE|- [--cas R] [--json]",
        "Store a value (bytes as given; - reads stdin, up to 512 KiB). With --cas R the write "
        "happens only if the key's mod revision is R (0: only if the key does not exist).",
        "drover kv put config/web/PORT 8080\n"
        "drover kv put config/web/cert - < cert.pem\n"
        "drover kv put config/web/PORT 8081 --cas 12\n"
        "drover kv put config/web/OFFSET -- -5"};
    enum { O_CAS, O_JSON, O_N };
    cli_opt_t opts[O_N] = {
        [O_CAS] = CLI_VALUE("cas", "R", "write only if the mod revision is R (409 otherwise)"),
        [O_JSON] = CLI_FLAG("json", "print the API answer ({key, mod_revision})"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 2, 2, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    buf_t path = BUF_INIT(0);
    buf_t value = BUF_INIT(CLI_MAX_KV_VALUE);
    err_t err = {0};
    if ((rc = kv_check_rev(ctx, &cmd, "cas", opts[O_CAS].value)) != CLI_CONTINUE)
        goto out;
    if (strcmp(args.pos[1], "-") == 0) {
        if (cli_read_input("-", CLI_MAX_KV_VALUE, &value, &err) < 0) {
            rc = cli_fail(ctx, "%s", err.msg);
            goto out;
        }
    } else if (buf_append_str(&value, args.pos[1]) < 0) {
        rc = cli_fail(ctx, "value is larger than %u bytes", CLI_MAX_KV_VALUE);
        goto out;
    }
    kv_path(&path, args.pos[0]);
    if (opts[O_CAS].value)
        kv_param(&path, "cas", opts[O_CAS].value);
    http_client_resp_t resp;
    json_t *j = NULL;
    if (cli_api(ctx, "PUT", path.data, "application/octet-stream", value.data ? value.data : "",
                value.len, CLI_TIMEOUT_MS, &resp, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else if (opts[O_JSON].count) {
        cli_print_raw(ctx, &resp);
        rc = CLI_EXIT_OK;
    } else {
        j = json_loadb(resp.body.data ? resp.body.data : "", resp.body.len, 0, NULL);
        char *rev = cli_json_text(json_object_get(j, "mod_revision"));
        fprintf(ctx->out, "stored %s (mod_revision %s)\n", args.pos[0], rev);
        free(rev);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
out:
    buf_free(&value);
    buf_free(&path);
    cli_args_free(&args, opts, O_N);
    return rc;
}

static int kv_del(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "kv del", "kv del KEY [--recurse] [--cas R] [--json]",
        "Delete a key, or with --recurse every key under the prefix KEY. Deleting a key that "
        "does not exist is not an error (\"deleted 0 keys\").",
        "drover kv del config/web/DEBUG\ndrover kv del config/web --recurse"};
    enum { O_REC, O_CAS, O_JSON, O_N };
    cli_opt_t opts[O_N] = {
        [O_REC] = CLI_FLAG("recurse", "delete every key under the prefix KEY"),
        [O_CAS] = CLI_VALUE("cas", "R", "delete only if the mod revision is R (409 otherwise)"),
        [O_JSON] = CLI_FLAG("json", "print the API answer ({deleted: N})"),
    };
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, O_N, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    buf_t path = BUF_INIT(0);
    if ((rc = kv_check_rev(ctx, &cmd, "cas", opts[O_CAS].value)) != CLI_CONTINUE)
        goto out;
    kv_path(&path, args.pos[0]);
    if (opts[O_REC].count)
        kv_param(&path, "recurse", NULL);
    if (opts[O_CAS].value)
        kv_param(&path, "cas", opts[O_CAS].value);
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "DELETE", path.data, NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else if (opts[O_JSON].count) {
        cli_print_raw(ctx, &resp);
        rc = CLI_EXIT_OK;
    } else {
        json_t *n = json_object_get(j, "deleted");
        long long count = json_is_integer(n) ? (long long)json_integer_value(n) : 0;
        fprintf(ctx->out, "deleted %lld key%s\n", count, count == 1 ? "" : "s");
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
out:
    buf_free(&path);
    cli_args_free(&args, opts, O_N);
    return rc;
}

static int kv_ls(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "kv ls", "kv ls [PREFIX] [--json]",
        "List keys under PREFIX (every key without one) with their values (text cut to 40 "
        "characters; other bytes as <binary N bytes>) and mod revisions.",
        "drover kv ls\ndrover kv ls config/web/\ndrover kv ls config --json | jq -r '.[].key'"};
    cli_opt_t opts[] = {
        CLI_FLAG("json", "print the API answer ([{key, value|value_base64, ...}])")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 0, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    buf_t path = BUF_INIT(0);
    kv_path(&path, args.n_pos ? args.pos[0] : "");
    kv_param(&path, "recurse", NULL);
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    rc = cli_api_json(ctx, "GET", path.data, NULL, 0, &resp, &j, &err);
    /* Nothing under the prefix is an empty listing, not a failure. */
    if (rc < 0 && resp.status == 404) {
        rc = 0;
        j = json_array();
        http_client_resp_free(&resp);
        http_client_resp_init(&resp, 16);
        buf_append_str(&resp.body, "[]");
    }
    if (rc < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count)
            cli_print_raw(ctx, &resp);
        else
            cli_kv_table(j, ctx->out);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    buf_free(&path);
    cli_args_free(&args, opts, 1);
    return rc;
}

int cli_cmd_kv(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_subcmd_t subs[] = {
        {"get", "kv get KEY", "print a value (--index/--wait block for a change)", kv_get},
        {"put", "kv put KEY VALUE|-", "store a value (- reads stdin; --cas R)", kv_put},
        {"del", "kv del KEY", "delete a key (--recurse for a prefix; --cas R)", kv_del},
        {"ls", "kv ls [PREFIX]", "list keys and values under a prefix", kv_ls},
    };
    return cli_dispatch(ctx, "kv", subs, sizeof(subs) / sizeof(subs[0]), argc, argv);
}
