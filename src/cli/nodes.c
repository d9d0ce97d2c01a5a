/* `drover nodes`: the node agents registered with the control plane and
 * what each offers (GET /v1/nodes). */
#include "cli/cli.h"

#include "core/alloc.h"
#include "core/json.h"

#include <stdlib.h>
#include <string.h>

/* ---- rendering ---------------------------------------------------------- */

/* Whole GiB print without decimals, others with one: "16 GiB", "15.5 GiB";
 * under 1 GiB stays in MiB so small nodes do not read "0.5 GiB". */
void cli_mem_format(int64_t mb, char *out, size_t n)
{
    if (mb < 1024) {
        snprintf(out, n, "%lld MiB", (long long)(mb < 0 ? 0 : mb));
        return;
    }
    if (mb % 1024 == 0)
        snprintf(out, n, "%lld GiB", (long long)(mb / 1024));
    else
        snprintf(out, n, "%.1f GiB", (double)mb / 1024.0);
}

/* "lo-hi" from the [lo, hi] range the agent hands out host ports from. */
static char *nodes_ports(const json_t *ports)
{
    if (json_array_size(ports) != 2)
        return cli_json_text(ports);
    char *lo = cli_json_text(json_array_get(ports, 0));
    char *hi = cli_json_text(json_array_get(ports, 1));
    char *s = xasprintf("%s-%s", lo, hi);
    free(lo);
    free(hi);
    return s;
}

/* Labels in the server's order as "k=v,k=v" (no blanks: one table cell,
 * one awk field). */
static char *nodes_labels(const json_t *labels)
{
    if (!json_is_object(labels) || json_object_size(labels) == 0)
        return xstrdup("-");
    buf_t b = BUF_INIT(0);
    for (void *it = json_object_iter((json_t *)labels); it;
         it = json_object_iter_next((json_t *)labels, it)) {
        char *v = cli_json_text(json_object_iter_value(it));
        buf_printf(&b, "%s%s=%s", b.len ? "," : "", json_object_iter_key(it), v);
        free(v);
    }
    return buf_steal(&b, NULL);
}

static int nodes_cmp(const void *a, const void *b)
{
    const char *x = json_str(*(const json_t *const *)a, "id");
    const char *y = json_str(*(const json_t *const *)b, "id");
    return strcmp(x ? x : "", y ? y : "");
}

void cli_nodes_table(const json_t *nodes, int64_t now_ms, FILE *out)
{
    static const char *const hdr[] = {"id", "address", "cpus", "mem", "ports", "labels", "age"};
    size_t n = json_array_size(nodes), k = 0;
    const json_t **rows = xcalloc(n ? n : 1, sizeof(*rows));
    for (size_t i = 0; i < n; i++)
        if (json_is_object(json_array_get(nodes, i)))
            rows[k++] = json_array_get(nodes, i);
    qsort(rows, k, sizeof(*rows), nodes_cmp);
    cli_table_t t;
    cli_table_init(&t, 7, hdr);
    for (size_t i = 0; i < k; i++) {
        const json_t *node = rows[i];
        char *cpus = cli_json_text(json_object_get(node, "cpus"));
        json_t *m = json_object_get(node, "mem_mb");
        char mem[32];
        if (json_is_integer(m))
            cli_mem_format(json_integer_value(m), mem, sizeof(mem));
        else
            snprintf(mem, sizeof(mem), "-");
        char *ports = nodes_ports(json_object_get(node, "ports"));
        char *labels = nodes_labels(json_object_get(node, "labels"));
        char age[32];
        cli_age_since(json_str(node, "registered_at"), now_ms, age, sizeof(age));
        const char *row[] = {
            json_str(node, "id"), json_str(node, "address"), cpus, mem, ports, labels, age};
        cli_table_add(&t, row);
        free(cpus);
        free(ports);
        free(labels);
    }
    cli_table_print(&t, out);
    cli_table_free(&t);
    free(rows);
}

/* ---- verb --------------------------------------------------------------- */

int cli_cmd_nodes(cli_ctx_t *ctx, int argc, char **argv)
{
    static const cli_cmd_t cmd = {
        "nodes", "nodes [--json]",
        "List the node agents registered with the control plane: address, CPUs, memory, the "
        "host port range instances get ports from, labels, and how long ago each registered.",
        "drover nodes\ndrover nodes --json | jq -r '.nodes[].agent_url'"};
    cli_opt_t opts[] = {CLI_FLAG("json", "print the API answer ({\"nodes\": [...]})")};
    cli_args_t args;
    int rc = cli_parse(ctx, &cmd, argc, argv, opts, 1, 0, 0, &args);
    if (rc != CLI_CONTINUE)
        return rc;
    http_client_resp_t resp;
    json_t *j = NULL;
    err_t err = {0};
    if (cli_api_json(ctx, "GET", "/v1/nodes", NULL, 0, &resp, &j, &err) < 0) {
        rc = cli_fail(ctx, "%s", err.msg);
    } else {
        if (opts[0].count)
            cli_print_raw(ctx, &resp);
        else
            cli_nodes_table(json_object_get(j, "nodes"), cli_now_ms(), ctx->out);
        rc = CLI_EXIT_OK;
    }
    json_decref(j);
    http_client_resp_free(&resp);
    cli_args_free(&args, opts, 1);
    return rc;
}
