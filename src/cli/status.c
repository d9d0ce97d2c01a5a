/* `drover status`: which server answers at DROVER_ADDR, and in what state. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

/* Known fields first in a fixed order, then whatever else the server
 * reports, so a newer server's fields show up without a CLI change. */
void cli_status_print(const json_t *status, const char *addr, FILE *out)
{
    fprintf(out, "%-10s %s\n", "addr:", addr);
    static const char *const known[] = {"version", "revision", "store", "uptime_s"};
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        json_t *v = json_object_get(status, known[i]);
        if (!v)
            continue;
        if (strcmp(known[i], "uptime_s") == 0 && json_is_integer(v)) {
            char d[64];
            cli_duration_format(json_integer_value(v), d, sizeof(d));
            fprintf(out, "%-10s %s\n", "uptime:", d);
            continue;
        }
        char *s = cli_json_text(v);
        char label[64];
        snprintf(label, sizeof(label), "%s:", known[i]);
        fprintf(out, "%-10s %s\n", label, s);
        free(s);
    }
    for (void *it = json_object_iter((json_t *)status); it;
         it = json_object_iter_next((json_t *)status, it)) {
        const char *k = json_object_iter_key(it);
        json_t *v = json_object_iter_value(it);
        bool seen = false;
        for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
            seen |= strcmp(k, known[i]) == 0;
        if (seen)
            continue;
        char *s = cli_json_text(v);
        char label[128];
        snprintf(label, sizeof(label), "%s:", k);
        fprintf(out, "%-10s %s\n", label, s);
        free(s);
    }
}

int cli_cmd_status(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "status", "status [--json]",
        "Show the API address in use and the server's version, store revision, store kind and "
        "uptime. Exit code 1 when no server answers.",
        "drover status\nDROVER_ADDR=http://10.0.0.5:7400 drover status --json"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "GET", "/v1/status", NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count)
            cli_print_raw(ctx, &resp);
        else
            cli_status_print(j, ctx->addr, ctx->out);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    cli_args_free(&args, opts, 1);
    return rc;
}
