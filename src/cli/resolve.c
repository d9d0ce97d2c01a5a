/* `drover resolve NAME`: ask a node's locator (not the API) where a service
 * runs, exactly as routers and workers find it (docs/protocol.md, section
 * 7). Useful to check what the data plane sees when the control plane says
 * an app is healthy. */
#include "cli/cli.h"

#include "core/str.h"
#include "locator/locator.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define CLI_DEFAULT_LOCATOR "127.0.0.1:10053"
/* A locator answers from memory; anything slower is not answering. */
#define CLI_LOCATOR_TIMEOUT_MS 10000L

/* The cli unit tests and fuzz targets link src/core, src/cli and src/http
 * only (TEST_DEPS_cli in the Makefile), so these weak stand-ins keep them
 * linking; wherever src/locator is linked (bin/drover) its definitions
 * replace them. */
__attribute__((weak)) int loc_client_resolve(const char *host_port, const char *name,
                                             long timeout_ms, loc_resolved_t *out, err_t *err)
{
    (void)host_port;
    (void)name;
    (void)timeout_ms;
    memset(out, 0, sizeof(*out));
    return err_set(err, -ENOSYS, "this build has no locator client");
}

__attribute__((weak)) void loc_resolved_free(loc_resolved_t *r)
{
    (void)r;
}

static void resolve_print_json(cli_ctx_t *ctx, const char *name, const loc_resolved_t *r)
{
    json_t *eps = json_array();
    for (size_t i = 0; i < r->n; i++)
        json_array_append_new(eps, json_pack("{s:s, s:i}", "host", r->eps[i].host, "port",
                                             (json_int_t)r->eps[i].port));
    json_t *j = json_pack("{s:s, s:o, s:I, s:s}", "name", name, "endpoints", eps, "version",
                          (json_int_t)r->version, "api", r->api ? r->api : "");
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    if (s)
        fprintf(ctx->out, "%s\n", s);
    free(s);
    json_decref(j);
}

/* Summary lines as `drover status` prints them, then the endpoints. */
static void resolve_print(cli_ctx_t *ctx, const char *name, const loc_resolved_t *r)
{
    fprintf(ctx->out, "%-10s %s\n", "name:", name);
    fprintf(ctx->out, "%-10s %lld\n", "version:", (long long)r->version);
    fprintf(ctx->out, "%-10s %s\n\n", "api:", r->api ? r->api : "-");
    static const char *const hdr[] = {"host", "port"};
    cli_table_t t;
    cli_table_init(&t, 2, hdr);
    for (size_t i = 0; i < r->n; i++) {
        char port[16];
        snprintf(port, sizeof(port), "%d", r->eps[i].port);
        const char *row[] = {r->eps[i].host, port};
        cli_table_add(&t, row);
    }
    cli_table_print(&t, ctx->out);
    cli_table_free(&t);
}

/* Errors that mean "nothing answered there" get a hint on where to look. */
static bool resolve_unreachable(int rc)
{
    return rc == -ECONNREFUSED || rc == -ETIMEDOUT || rc == -EHOSTUNREACH || rc == -ENETUNREACH ||
           rc == -ECONNRESET;
}

int cli_cmd_resolve(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "resolve", "resolve NAME [--locator HOST:PORT] [--json]",
        "Ask a node's locator where NAME runs: the endpoints (host and port) routers send its "
        "traffic to, the app version and the api. The locator is --locator, else "
        "$DROVER_LOCATOR, else " CLI_DEFAULT_LOCATOR " (the local agent). Exit code 1 when the "
        "locator does not know NAME or does not answer.",
        "drover resolve /production/web\n"
        "drover resolve /production/web --locator 10.0.0.5:10053 --json"};
    cli_opt_t opts[] = {
        CLI_VALUE("locator", "HOST:PORT",
                  "locator to ask (default $DROVER_LOCATOR or " CLI_DEFAULT_LOCATOR ")"),
        CLI_FLAG("json", "print {name, endpoints: [{host, port}], version, api}"),
    };
    size_t n_opts = sizeof(opts) / sizeof(opts[0]);
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, n_opts, 1, 1, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    const char *name = args.pos[0];
    const char *env = getenv("DROVER_LOCATOR");
    const char *where = opts[0].count ? "--locator" : "DROVER_LOCATOR";
    const char *locator = opts[0].count ? opts[0].value : env && *env ? env : CLI_DEFAULT_LOCATOR;
    char *host = NULL;
    int port;
    if (str_split_hostport(locator, &host, &port) < 0 || !*host) {
        free(host);
        rc = cli_usage_error(ctx, &cmd, "%s %s: expected HOST:PORT ([v6]:PORT for IPv6)", where,
                             locator);
        cli_args_free(&args, opts, n_opts);
        return rc;
    }
    free(host);
    loc_resolved_t r;
    err_t err = {0};
    int lrc = loc_client_resolve(locator, name, CLI_LOCATOR_TIMEOUT_MS, &r, &err);
    if (lrc == -ENOENT) {
        rc = cli_fail(ctx, "%s: %s", name, err.msg);
    } else if (lrc < 0 && resolve_unreachable(lrc)) {
        rc = cli_fail(ctx, "%s (is a drover agent running there? set DROVER_LOCATOR or --locator)",
                      err.msg);
    } else if (lrc < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[1].count)
            resolve_print_json(ctx, name, &r);
        else
            resolve_print(ctx, name, &r);
        rc = CLI_EXIT_OK;
    }
    loc_resolved_free(&r);
    cli_args_free(&args, opts, n_opts);
    return rc;
}
