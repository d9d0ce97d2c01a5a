/* Fuzz the CLI's rendering of instance, node and app answers: what the
 * server (or anything at DROVER_ADDR) sends is outside input.
 *
 * Properties: tables are one header line plus at most one line per array
 * element, and no line holds a control character (a hostile reason or
 * label cannot move the terminal or split a row); `ps` without --all never
 * shows more rows than with it; the instance `logs` picks is sorted, and a
 * follow picks exactly one. */
#include "agent/artifact.h"
#include "cli/cli.h"
#include "core/alloc.h"
#include "core/json.h"
#include "spec/spec.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Fuzz targets link src/core and src/cli only; the CLI's other
 * dependencies are never reached from the renderers, so they are stubs. */
void http_client_resp_init(http_client_resp_t *resp, size_t max_body)
{
    resp->status = 0;
    buf_init(&resp->headers, 1);
    buf_init(&resp->body, max_body);
}
void http_client_resp_free(http_client_resp_t *resp)
{
    buf_free(&resp->headers);
    buf_free(&resp->body);
}
char *http_client_resp_header(const http_client_resp_t *resp, const char *name)
{
    return NULL;
}
int http_client_request(const char *method, const char *url, const http_header_t *headers,
                        size_t n_headers, const void *body, size_t len, long timeout_ms,
                        http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_stream(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const void *body, size_t len,
                       int (*on_data)(const char *p, size_t n, void *data), void *data,
                       http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_stream_follow(const char *method, const char *url, const http_header_t *headers,
                              size_t n_headers, long timeout_ms,
                              int (*on_data)(const char *p, size_t n, void *data), void *data,
                              http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int http_client_upload(const char *method, const char *url, const http_header_t *headers,
                       size_t n_headers, const char *path, long timeout_ms,
                       http_client_resp_t *resp, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int spec_template_fill(const char *text, size_t len, const spec_var_t *vars, size_t n_vars,
                       char **out, size_t *out_len, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}
int artifact_pack(const char *dir, const char *out, char *id_out, err_t *err)
{
    return err_set(err, -ENOSYS, "fuzz stub");
}

#define NOW_MS 1795264500000LL

/* Lines in a rendered table, aborting on a control character. */
static size_t table_lines(const char *s, size_t len)
{
    size_t lines = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n')
            lines++;
        else if (c < 0x20 || c == 0x7f)
            abort();
    }
    if (len && s[len - 1] != '\n')
        abort();
    return lines;
}

static size_t render_ps(const json_t *list, bool all)
{
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_ps_table(list, all, NOW_MS, f);
    fclose(f);
    size_t lines = table_lines(b, n);
    if (lines < 1 || lines > 1 + json_array_size(list))
        abort();
    free(b);
    return lines;
}

static void check_nodes(const json_t *list)
{
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_nodes_table(list, NOW_MS, f);
    fclose(f);
    size_t lines = table_lines(b, n);
    if (lines < 1 || lines > 1 + json_array_size(list))
        abort();
    free(b);
}

static void check_pick(const json_t *list, const char *instance, bool follow)
{
    const char **ids;
    size_t n;
    err_t err = {0};
    int rc = cli_logs_pick(list, "/a", instance, follow, &ids, &n, &err);
    if (rc < 0) {
        if (!err.msg[0] || ids || n)
            abort();
        return;
    }
    if (n == 0 || (follow && n != 1) || (instance && (n != 1 || strcmp(ids[0], instance))))
        abort();
    for (size_t i = 1; i < n; i++)
        if (strcmp(ids[i - 1], ids[i]) > 0)
            abort();
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    json_t *j = json_loadb((const char *)data, size, JSON_DECODE_ANY | JSON_ALLOW_NUL, NULL);
    if (!j)
        return 0;
    json_t *list = json_is_array(j) ? j : json_object_get(j, "instances");
    size_t shown = render_ps(list, false), all = render_ps(list, true);
    if (shown > all)
        abort();
    check_nodes(json_is_array(j) ? j : json_object_get(j, "nodes"));
    for (size_t i = 0; i < json_array_size(list); i++) {
        const json_t *inst = json_array_get(list, i);
        char *a = cli_instance_address(inst), *s = cli_instance_state(inst);
        free(a);
        free(s);
    }
    check_pick(list, NULL, false);
    check_pick(list, NULL, true);
    const char *first = json_str(json_array_get(list, 0), "id");
    check_pick(list, first, true);
    char *b = NULL;
    size_t n = 0;
    FILE *f = open_memstream(&b, &n);
    cli_app_show(j, NOW_MS, f);
    cli_push_print("dir", j, f);
    fclose(f);
    free(b);
    /* The last-failure line alone (other fields of app show print the
     * spec's text as it is): one clean line. */
    json_t *lf = json_object_get(j, "lastTaskFailure");
    if (lf) {
        json_t *app = json_pack("{s:O}", "lastTaskFailure", lf);
        f = open_memstream(&b, &n);
        cli_app_show(app, NOW_MS, f);
        fclose(f);
        size_t lines = table_lines(b, n);
        if (lines != (json_is_object(lf) ? 15u : 14u))
            abort();
        free(b);
        json_decref(app);
    }
    json_decref(j);
    return 0;
}
