/* cli: dispatch of `drover <verb>` and the API request wrapper every verb
 * goes through. */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"
#include "core/str.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

typedef struct cli_verb {
    const char *name;
    int (*run)(cli_ctx_t *ctx, int argc, char **argv);
} cli_verb_t;

static const cli_verb_t cli_verbs[] = {
    {"apps", cli_cmd_apps},
    {"app", cli_cmd_app},
    {"deploy", cli_cmd_deploy},
    {"versions", cli_cmd_versions},
    {"push", cli_cmd_push},
    {"ps", cli_cmd_ps},
    {"logs", cli_cmd_logs},
    {"nodes", cli_cmd_nodes},
    {"kv", cli_cmd_kv},
    {"events", cli_cmd_events},
    {"status", cli_cmd_status},
    {"group", cli_cmd_group},
    {"resolve", cli_cmd_resolve},
    {"invoke", cli_cmd_invoke}, /* invoke.c */
    /* deployments.c */
    {"deployments", cli_cmd_deployments},
    {"deployment", cli_cmd_deployment},
    {"scale", cli_cmd_scale},
    {"rollback", cli_cmd_rollback},
    {"promote", cli_cmd_promote},
    {"abort", cli_cmd_abort},
    {"restart", cli_cmd_restart},
    /* workers.c */
    {"crashlog", cli_cmd_crashlog},
};

void cli_usage(FILE *out)
{
    fputs("usage: drover [--addr URL] <command> [args] [flags]\n"
          "\n"
          "Processes:\n"
          "  dev                      run server, agent and gateway in one process (SQLite store)\n"
          "  server                   run the control plane (API, store, scheduler)\n"
          "  agent                    run a node agent that runs instances (--server URL)\n"
          "  gateway                  run the HTTP/TCP router (--metalocator HOST:PORT)\n"
          "\n"
          "Apps:\n"
          "  apps                     list apps\n"
          "  app show ID              show one app's current version\n"
          "  app rm ID                delete an app and its version history\n"
          "  app versions ID          same as `drover versions ID`\n"
          "  app stop ID              scale an app to 0, remembering its instance count\n"
          "  app start ID             bring a stopped app back to its count\n"
          "  app pool ID [N|auto]     pin a worker app's pool per node, or show it\n"
          "  crashlog ls|show APP     what the engine kept of a worker app's dead workers\n"
          "  deploy FILE              create or update an app from a spec (--var, --wait)\n"
          "  versions ID              list the versions of an app\n"
          "  push DIR                 upload a directory as an artifact for specs to run\n"
          "\n"
          "Deployments:\n"
          "  deployments              list running deployments (--app, --all for finished)\n"
          "  deployment show ID       show a deployment's progress and steps\n"
          "  deployment wait ID       follow a deployment until it ends\n"
          "  deployment cancel ID     stop a deployment where it is\n"
          "  scale APP N              set the instance count (--wait follows the deployment)\n"
          "  rollback APP [VERSION]   go back to an earlier version's spec\n"
          "  restart APP              replace every instance, rolling\n"
          "  promote APP              make the canary the current version\n"
          "  abort APP                stop the canary; the current version keeps the traffic\n"
          "\n"
          "Instances:\n"
          "  ps [APP]                 list instances: node, address, state (--all for ended)\n"
          "  logs APP|INSTANCE        print an instance's output (-f follows; --tail N)\n"
          "  nodes                    list the node agents and their resources\n"
          "  resolve NAME             ask a node's locator where NAME runs (--locator HOST:PORT)\n"
          "  invoke APP EVENT [DATA|-] invoke a worker app once, print the reply (--timeout MS)\n"
          "\n"
          "Config:\n"
          "  kv get KEY               print a value (--index/--wait block for a change)\n"
          "  kv put KEY VALUE|-       store a value (- reads stdin; --cas R)\n"
          "  kv del KEY               delete a key (--recurse for a prefix; --cas R)\n"
          "  kv ls [PREFIX]           list keys and values under a prefix\n"
          "\n"
          "Routing:\n"
          "  group create NAME T=W... create a routing group: NAME -> weighted apps/versions\n"
          "  group set NAME T=W...    replace a group's members and weights (canary, A/B)\n"
          "  group rm NAME            delete a routing group\n"
          "  group ls                 list routing groups with each member's share\n"
          "  group show NAME          show a group's members, weights, shares, stickiness\n"
          "\n"
          "Observe:\n"
          "  events                   follow the event stream (--type, --from)\n"
          "  status                   show the server's version, revision and store\n"
          "\n"
          "Global flags:\n"
          "  --addr URL               API address (default $DROVER_ADDR or " CLI_DEFAULT_ADDR ")\n"
          "  --json                   print the API's JSON instead of tables (most commands)\n"
          "  -h, --help               help; `drover <command> --help` shows flags and examples\n"
          "  --version                print drover's version\n",
          out);
}

int cli_ctx_set_addr(cli_ctx_t *ctx, const char *addr, err_t *err)
{
    if (!addr || !*addr)
        return err_set(err, -EINVAL, "empty API address");
    char *a = strstr(addr, "://") ? xstrdup(addr) : xasprintf("http://%s", addr);
    size_t n = strlen(a);
    while (n > 0 && a[n - 1] == '/')
        a[--n] = '\0';
    const char *sep = strstr(a, "://");
    if (!sep || !sep[3]) {
        free(a);
        return err_set(err, -EINVAL, "API address %s has no host", addr);
    }
    free(ctx->addr);
    ctx->addr = a;
    return 0;
}

void cli_error_message(int status, const char *body, size_t len, char *msg, size_t n)
{
    json_t *j = len ? json_loadb(body, len, 0, NULL) : NULL;
    const char *e = j ? json_str(j, "error") : NULL;
    if (e && *e) {
        snprintf(msg, n, "%s", e);
        json_decref(j);
        return;
    }
    json_decref(j);
    /* Errors the HTTP layer writes by itself (413, 431, 503) are short
     * text; take the first line, without control characters. */
    size_t i = 0;
    while (i < len && (body[i] == ' ' || body[i] == '\r' || body[i] == '\n'))
        i++;
    size_t j0 = i;
    while (i < len && body[i] != '\r' && body[i] != '\n' && i - j0 < 200)
        i++;
    if (i > j0) {
        snprintf(msg, n, "%.*s (HTTP %d)", (int)(i - j0), body + j0, status);
        for (char *p = msg; *p; p++)
            if ((unsigned char)*p < 0x20 || *p == 0x7f)
                *p = '?';
    } else {
        snprintf(msg, n, "HTTP %d", status);
    }
}

/* The transport error from the client names what failed; saying where the
 * CLI looked answers the usual follow-up question. */
static int api_transport_error(cli_ctx_t *ctx, int rc, err_t *err)
{
    char msg[ERR_MSG_MAX];
    snprintf(msg, sizeof(msg), "%s", err_str(err, rc));
    return err_set(err, rc, "%s (is drover running at %s? set DROVER_ADDR or --addr)", msg,
                   ctx->addr);
}

int cli_api(cli_ctx_t *ctx, const char *method, const char *path, const char *content_type,
            const void *body, size_t len, long timeout_ms, http_client_resp_t *resp, err_t *err)
{
    http_client_resp_init(resp, CLI_MAX_RESPONSE);
    char *url = xasprintf("%s%s", ctx->addr, path);
    http_header_t hdr[2];
    size_t n_hdr = 0;
    hdr[n_hdr++] = (http_header_t){"Accept", "application/json"};
    if (content_type)
        hdr[n_hdr++] = (http_header_t){"Content-Type", content_type};
    err_t terr = {0};
    int rc = http_client_request(method, url, hdr, n_hdr, body, len, timeout_ms, resp, &terr);
    free(url);
    if (rc < 0) {
        if (err)
            *err = terr;
        return api_transport_error(ctx, rc, err);
    }
    if (resp->status < 200 || resp->status > 299) {
        char msg[ERR_MSG_MAX];
        cli_error_message(resp->status, resp->body.data, resp->body.len, msg, sizeof(msg));
        return err_set(err, -EPROTO, "%s", msg);
    }
    return 0;
}

int cli_api_upload(cli_ctx_t *ctx, const char *method, const char *path, const char *content_type,
                   const char *file, long timeout_ms, http_client_resp_t *resp, err_t *err)
{
    http_client_resp_init(resp, CLI_MAX_RESPONSE);
    char *url = xasprintf("%s%s", ctx->addr, path);
    http_header_t hdr[2] = {{"Accept", "application/json"}, {"Content-Type", content_type}};
    err_t terr = {0};
    int rc =
        http_client_upload(method, url, hdr, content_type ? 2 : 1, file, timeout_ms, resp, &terr);
    free(url);
    if (rc < 0) {
        if (err)
            *err = terr;
        return api_transport_error(ctx, rc, err);
    }
    if (resp->status < 200 || resp->status > 299) {
        char msg[ERR_MSG_MAX];
        cli_error_message(resp->status, resp->body.data, resp->body.len, msg, sizeof(msg));
        return err_set(err, -EPROTO, "%s", msg);
    }
    return 0;
}

int cli_api_json(cli_ctx_t *ctx, const char *method, const char *path, const void *body, size_t len,
                 http_client_resp_t *resp, json_t **out, err_t *err)
{
    *out = NULL;
    int rc = cli_api(ctx, method, path, body ? "application/json" : NULL, body, len, CLI_TIMEOUT_MS,
                     resp, err);
    if (rc < 0)
        return rc;
    err_t perr = {0};
    json_t *j = json_parse(resp->body.data ? resp->body.data : "", resp->body.len, &perr);
    if (!j)
        return err_set(err, -EPROTO, "%s %s: answer is not JSON: %s", method, path, perr.msg);
    *out = j;
    return 0;
}

void cli_print_raw(cli_ctx_t *ctx, const http_client_resp_t *resp)
{
    if (resp->body.len)
        fwrite(resp->body.data, 1, resp->body.len, ctx->out);
    if (!resp->body.len || resp->body.data[resp->body.len - 1] != '\n')
        fputc('\n', ctx->out);
}

static const cli_verb_t *cli_verb_find(const char *name)
{
    for (size_t i = 0; i < sizeof(cli_verbs) / sizeof(cli_verbs[0]); i++)
        if (strcmp(cli_verbs[i].name, name) == 0)
            return &cli_verbs[i];
    return NULL;
}

/* Global flags may precede the verb (`drover --addr URL apps`); verbs
 * accept --addr among their own flags too, so it can go anywhere. */
int cli_main(int argc, char **argv)
{
    cli_ctx_t ctx = {.addr = NULL, .out = stdout, .err = stderr, .tty = isatty(STDOUT_FILENO)};
    err_t err = {0};
    const char *env = getenv("DROVER_ADDR");
    if (cli_ctx_set_addr(&ctx, env && *env ? env : CLI_DEFAULT_ADDR, &err) < 0) {
        fprintf(stderr, "drover: DROVER_ADDR: %s\n", err.msg);
        return CLI_EXIT_USAGE;
    }
    int rc = CLI_EXIT_USAGE;
    int i = 1;
    while (i < argc && argv[i][0] == '-') {
        const char *a = argv[i];
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            cli_usage(stdout);
            rc = CLI_EXIT_OK;
            goto out;
        }
        const char *value = NULL;
        if (strcmp(a, "--addr") == 0) {
            if (i + 1 >= argc) {
                fprintf(stderr, "drover: flag --addr needs a value (URL)\n");
                goto out;
            }
            value = argv[i + 1];
            i += 2;
        } else if (str_has_prefix(a, "--addr=")) {
            value = a + 7;
            i++;
        } else {
            fprintf(stderr, "drover: unknown flag %s\nrun `drover --help` for the commands\n", a);
            goto out;
        }
        if (cli_ctx_set_addr(&ctx, value, &err) < 0) {
            fprintf(stderr, "drover: --addr: %s\n", err.msg);
            goto out;
        }
    }
    if (i >= argc) {
        cli_usage(stderr);
        goto out;
    }
    const char *verb = argv[i];
    if (strcmp(verb, "help") == 0) {
        if (i + 1 >= argc) {
            cli_usage(stdout);
            rc = CLI_EXIT_OK;
            goto out;
        }
        /* `drover help kv get` is `drover kv get --help`. */
        const cli_verb_t *v = cli_verb_find(argv[i + 1]);
        if (!v) {
            fprintf(stderr, "drover: unknown command '%s'\nrun `drover --help` for the commands\n",
                    argv[i + 1]);
            goto out;
        }
        int n = argc - i - 2;
        char **sub = xcalloc((size_t)n + 2, sizeof(*sub));
        for (int k = 0; k < n; k++)
            sub[k] = argv[i + 2 + k];
        sub[n] = (char *)"--help";
        rc = v->run(&ctx, n + 1, sub);
        free(sub);
        goto out;
    }
    const cli_verb_t *v = cli_verb_find(verb);
    if (!v) {
        if (strcmp(verb, "dev") == 0 || strcmp(verb, "server") == 0 || strcmp(verb, "agent") == 0 ||
            strcmp(verb, "gateway") == 0)
            fprintf(stderr,
                    "drover: '%s' must be the first argument (it takes --api ADDR, not --addr)\n",
                    verb);
        else
            fprintf(stderr, "drover: unknown command '%s'\nrun `drover --help` for the commands\n",
                    verb);
        goto out;
    }
    rc = v->run(&ctx, argc - i - 1, argv + i + 1);
out:
    fflush(stdout);
    free(ctx.addr);
    return rc;
}
